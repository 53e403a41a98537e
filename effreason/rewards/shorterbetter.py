"""ShorterBetter's sample-optimal-length reward (Yi et al. 2025, "ShorterBetter: Guiding Reasoning Models
to Find Optimal Inference Length for Efficient Reasoning", arXiv 2504.21370)."""

from __future__ import annotations

import torch

from effreason.rewards._inputs import grouped
from effreason.rewards.registry import RewardInputs, RewardOption, check_non_negative, register_reward

SHORTERBETTER_ALPHA = RewardOption("shorterbetter_alpha", 2.0, "ShorterBetter's alpha: weight of correctness", check=check_non_negative)
SHORTERBETTER_BETA = RewardOption("shorterbetter_beta", 0.001, "ShorterBetter's beta: reward lost per token of distance to the "
                                  "group's sample optimal length", check=check_non_negative)


def sample_optimal_lengths(correct: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """ShorterBetter's SOL of every group, (G,) float64: the length of its shortest correct sample,
    or the mean length of its samples when none is correct."""
    correct_g, lengths_g = grouped(correct, lengths, group_size)  # (G, k)
    shortest_correct = lengths_g.masked_fill(~correct_g, float("inf")).min(dim=1).values
    return torch.where(correct_g.any(dim=1), shortest_correct, lengths_g.mean(dim=1))


def shorterbetter_reward(correct: torch.Tensor, lengths: torch.Tensor, group_size: int, alpha: float, beta: float) -> torch.Tensor:
    """ShorterBetter: ``r_i = alpha * 1[correct_i] - beta * |len_i - SOL|``, (S,) float32, with SOL the
    group's sample optimal length (:func:`sample_optimal_lengths`)."""
    correct_g, lengths_g = grouped(correct, lengths, group_size)
    optimal = sample_optimal_lengths(correct, lengths, group_size).unsqueeze(1)  # (G, 1)
    reward = alpha * correct_g.to(torch.float64) - beta * (lengths_g - optimal).abs()
    return reward.reshape(-1).to(torch.float32)


@register_reward("shorterbetter", source="Yi et al. 2025", options=(SHORTERBETTER_ALPHA, SHORTERBETTER_BETA))
def shorterbetter(inputs: RewardInputs, *, shorterbetter_alpha: float, shorterbetter_beta: float) -> torch.Tensor:
    """``shorterbetter_reward`` over the rollout's groups."""
    return shorterbetter_reward(inputs.correct, inputs.lengths, inputs.group_size, shorterbetter_alpha, shorterbetter_beta)
