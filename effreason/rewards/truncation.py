"""The truncation reward of DLER (Liu et al. 2025, arXiv 2510.15110) and ThinkPrune (Hou et al. 2025,
arXiv 2504.01296): a response over the length limit earns nothing."""

from __future__ import annotations

import torch

from effreason.rewards._inputs import per_sample
from effreason.rewards.registry import RewardInputs, register_reward


def truncation_reward(correct: torch.Tensor, lengths: torch.Tensor, limit: int) -> torch.Tensor:
    """``r = 1[correct and len <= L]`` with ``L = limit`` tokens, (S,) float32.

    With the rollout's own token limit as ``L`` (responses cut there never emit a stop token, so
    they already count as wrong) this is the plain 0/1 correctness reward of GRPO.
    """
    correct, lengths = per_sample(correct, lengths)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    return (correct & (lengths <= limit)).to(torch.float32)


@register_reward("truncation", source="DLER, Liu et al. 2025; ThinkPrune, Hou et al. 2025")
def truncation(inputs: RewardInputs) -> torch.Tensor:
    """``truncation_reward`` with the budget (``--length-budget``, default the step's rollout token limit) as ``L``."""
    return truncation_reward(inputs.correct, inputs.lengths, inputs.budget)
