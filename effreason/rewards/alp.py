"""ALP, the adaptive length penalty (Xiang et al. 2025, "Just Enough Thinking: Efficient Reasoning with
Adaptive Length Penalties Reinforcement Learning", arXiv 2506.05256, eq. 1)."""

from __future__ import annotations

import torch

from effreason.rewards._inputs import grouped
from effreason.rewards.registry import RewardInputs, RewardOption, check_non_negative, register_reward

ALP_BETA = RewardOption(
    "alp_beta", 0.5,
    "ALP's beta: reward lost by a response of the whole budget on a prompt solved by every sample "
    "(the penalty is beta * max(solve rate, 1/k) * len / budget)",
    check=check_non_negative,
)


def alp_reward(correct: torch.Tensor, lengths: torch.Tensor, group_size: int, beta: float, norm_length: float) -> torch.Tensor:
    """ALP: a length penalty scaled by the prompt's online solve rate, (S,) float32.

    With ``p`` the share of the group's ``k`` samples that are correct (the prompt's solve rate this
    step) and ``N = norm_length``::

        r_i = 1[correct_i] - beta * max(p, 1/k) * len_i / N

    Every sample of the prompt pays the penalty, right or wrong. Easy prompts (``p`` near 1) pay the
    most per token; a prompt no sample solves pays the floor ``1/k``.
    """
    correct_g, lengths_g = grouped(correct, lengths, group_size)  # (G, k)
    if not norm_length > 0:
        raise ValueError(f"norm_length must be > 0, got {norm_length}")
    solve_rate = correct_g.to(torch.float64).mean(dim=1, keepdim=True).clamp_min(1.0 / group_size)
    reward = correct_g.to(torch.float64) - beta * solve_rate * lengths_g / norm_length
    return reward.reshape(-1).to(torch.float32)


@register_reward("alp", source="Xiang et al. 2025", options=(ALP_BETA,))
def alp(inputs: RewardInputs, *, alp_beta: float) -> torch.Tensor:
    """``alp_reward`` over the rollout's groups with the budget as ALP's normalising length ``N``."""
    return alp_reward(inputs.correct, inputs.lengths, inputs.group_size, alp_beta, float(inputs.budget))
