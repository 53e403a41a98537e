"""Kimi k1.5's length reward (Kimi Team 2025, "Kimi k1.5: Scaling Reinforcement Learning with LLMs", sec. 2.3.3)."""

from __future__ import annotations

import torch

from effreason.rewards._inputs import grouped
from effreason.rewards.registry import RewardInputs, RewardOption, check_non_negative, register_reward

KIMI_WEIGHT = RewardOption(
    "kimi_weight", 1.0,
    "weight of the length reward added to the 0/1 correctness reward (Kimi k1.5 sec. 2.3.3: 'a weighting parameter')",
    check=check_non_negative,
)


def kimi_length_reward(
    correct: torch.Tensor, lengths: torch.Tensor, group_size: int, weight: float = KIMI_WEIGHT.default
) -> torch.Tensor:
    """Kimi k1.5 length reward added to a 0/1 correctness reward.

    With min/max length over all samples of the group::

        lambda_i = 0.5 - (len_i - min) / (max - min)      (0 when max == min)
        r_i = 1[correct_i] + weight * (lambda_i if correct_i else min(0, lambda_i))
    """
    correct_g, lengths_g = grouped(correct, lengths, group_size)
    shortest = lengths_g.min(dim=1, keepdim=True).values
    spread = lengths_g.max(dim=1, keepdim=True).values - shortest
    lam = torch.where(spread > 0, 0.5 - (lengths_g - shortest) / spread.clamp_min(1e-12), torch.zeros_like(lengths_g))
    length_term = torch.where(correct_g, lam, lam.clamp_max(0.0))
    return (correct_g.to(torch.float64) + weight * length_term).reshape(-1).to(torch.float32)


@register_reward("kimi", source="Kimi Team 2025", options=(KIMI_WEIGHT,))
def kimi(inputs: RewardInputs, *, kimi_weight: float) -> torch.Tensor:
    """``kimi_length_reward`` over the rollout's groups."""
    return kimi_length_reward(inputs.correct, inputs.lengths, inputs.group_size, kimi_weight)
