"""The paper's reward (Arora & Zanette 2025, "Training Language Models to Reason Efficiently")."""

from __future__ import annotations

import torch

from effreason._validation import check_unit_interval
from effreason.rewards._inputs import grouped
from effreason.rewards.registry import RewardInputs, RewardOption, register_reward

STD_EPS = 1e-7
"""The epsilon added to the population std in the paper's reward (reference code)."""

ALPHA = RewardOption("alpha", 0.2, "length penalty strength, in [0, 1]", check=check_unit_interval)


def length_penalized_reward(
    correct: torch.Tensor, lengths: torch.Tensor, group_size: int, alpha: float
) -> torch.Tensor:
    """The paper's length-normalised reward.

    Within each group of ``group_size`` consecutive samples of one prompt, with mean and
    population std (ddof = 0) of the lengths taken over the *correct* samples only::

        r_i = 1 - alpha * sigmoid((len_i - mean) / (std + 1e-7))   if correct_i
        r_i = 0                                                      otherwise

    No correct sample gives all zeros; one correct sample, or equal correct lengths, gives
    ``1 - alpha / 2``. Correct rewards lie in ``(1 - alpha, 1]`` (``= 1`` only for alpha = 0).

    Args:
        correct: (S,) bool, the answer matched and the response ended with EOS.
        lengths: (S,) response lengths in tokens (any offset cancels).
        group_size: samples per prompt; S must be a multiple.
        alpha: penalty strength in [0, 1].
    """
    alpha = check_unit_interval("alpha", alpha)
    correct_g, lengths_g = grouped(correct, lengths, group_size)  # (G, k)
    weights = correct_g.to(torch.float64)
    num_correct = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (weights * lengths_g).sum(dim=1, keepdim=True) / num_correct
    variance = (weights * (lengths_g - mean) ** 2).sum(dim=1, keepdim=True) / num_correct
    z = (lengths_g - mean) / (variance.sqrt() + STD_EPS)
    reward = torch.where(correct_g, 1.0 - alpha * torch.sigmoid(z), torch.zeros_like(z))
    return reward.reshape(-1).to(torch.float32)


@register_reward("paper", source="Arora & Zanette 2025", options=(ALPHA,), fused=True)
def paper(inputs: RewardInputs, *, alpha: float) -> torch.Tensor:
    """``length_penalized_reward`` over the rollout's groups."""
    return length_penalized_reward(inputs.correct, inputs.lengths, inputs.group_size, alpha)
