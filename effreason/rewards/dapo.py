"""DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", eq. 13)."""

from __future__ import annotations

import torch

from effreason.rewards._inputs import per_sample
from effreason.rewards.registry import RewardInputs, RewardOption, check_fraction, register_reward

DAPO_CACHE_FRACTION = RewardOption(
    "dapo_cache_fraction", 0.25,
    "soft-punishment window L_cache as a fraction of the budget L_max, in (0, 1]; the default is "
    "4096 / 16384, DAPO's cache over its expected length (their L_max of 20480 gives 0.2)",
    check=check_fraction,
)


def dapo_overlong_reward(
    correct: torch.Tensor, lengths: torch.Tensor, max_length: int, cache_length: int
) -> torch.Tensor:
    """DAPO's soft overlong punishment added to a 0/1 correctness reward.

    With ``L_max = max_length`` and ``L_cache = cache_length``::

        penalty = 0                                   if len <= L_max - L_cache
                = ((L_max - L_cache) - len) / L_cache if L_max - L_cache < len <= L_max
                = -1                                  if len > L_max
        r = 1[correct] + penalty
    """
    correct, lengths = per_sample(correct, lengths)
    if not 0 < cache_length <= max_length:
        raise ValueError(f"cache_length must be in (0, max_length={max_length}], got {cache_length}")
    soft_start = max_length - cache_length
    penalty = ((soft_start - lengths) / cache_length).clamp(min=-1.0, max=0.0)
    penalty = torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty)
    return (correct.to(torch.float64) + penalty).to(torch.float32)


@register_reward("dapo-overlong", source="Yu et al. 2025", options=(DAPO_CACHE_FRACTION,))
def dapo_overlong(inputs: RewardInputs, *, dapo_cache_fraction: float) -> torch.Tensor:
    """``dapo_overlong_reward`` with ``L_max`` the budget and ``L_cache = max(1, floor(fraction * L_max))`` tokens."""
    cache_length = max(1, int(inputs.budget * dapo_cache_fraction))
    return dapo_overlong_reward(inputs.correct, inputs.lengths, inputs.budget, cache_length)
