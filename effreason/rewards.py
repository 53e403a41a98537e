"""Sequence-level rewards: the paper's length-normalised reward and the length rewards users compare it with.

Every function takes per-sample tensors of shape (S,) where consecutive blocks of
``group_size`` samples answer the same prompt, and returns float32 rewards (S,).
Statistics are computed in float64.
"""

from __future__ import annotations

import torch

from effreason._validation import (
    check_bool,
    check_group_size,
    check_lengths,
    check_unit_interval,
    check_vector,
)

STD_EPS = 1e-7
"""The epsilon added to the population std in the paper's reward (reference code)."""


def _grouped(correct: torch.Tensor, lengths: torch.Tensor, group_size: int, minimum_group: int = 1):
    """Validate and reshape to (G, group_size): bool correctness and float64 lengths."""
    check_bool("correct", check_vector("correct", correct))
    check_lengths("lengths", lengths, size=correct.numel())
    check_group_size(group_size, correct.numel(), minimum=minimum_group)
    return correct.view(-1, group_size), lengths.to(torch.float64).view(-1, group_size)


def length_penalized_reward(
    correct: torch.Tensor, lengths: torch.Tensor, group_size: int, alpha: float
) -> torch.Tensor:
    """The paper's reward (Arora & Zanette 2025, "Training Language Models to Reason Efficiently").

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
    correct_g, lengths_g = _grouped(correct, lengths, group_size)  # (G, k)
    weights = correct_g.to(torch.float64)
    num_correct = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (weights * lengths_g).sum(dim=1, keepdim=True) / num_correct
    variance = (weights * (lengths_g - mean) ** 2).sum(dim=1, keepdim=True) / num_correct
    z = (lengths_g - mean) / (variance.sqrt() + STD_EPS)
    reward = torch.where(correct_g, 1.0 - alpha * torch.sigmoid(z), torch.zeros_like(z))
    return reward.reshape(-1).to(torch.float32)


def kimi_length_reward(
    correct: torch.Tensor, lengths: torch.Tensor, group_size: int, weight: float = 1.0
) -> torch.Tensor:
    """Kimi k1.5 length reward added to a 0/1 correctness reward (Kimi Team 2025, sec. 2.3.3).

    With min/max length over all samples of the group::

        lambda_i = 0.5 - (len_i - min) / (max - min)      (0 when max == min)
        r_i = 1[correct_i] + weight * (lambda_i if correct_i else min(0, lambda_i))
    """
    correct_g, lengths_g = _grouped(correct, lengths, group_size)
    shortest = lengths_g.min(dim=1, keepdim=True).values
    spread = lengths_g.max(dim=1, keepdim=True).values - shortest
    lam = torch.where(spread > 0, 0.5 - (lengths_g - shortest) / spread.clamp_min(1e-12), torch.zeros_like(lengths_g))
    length_term = torch.where(correct_g, lam, lam.clamp_max(0.0))
    return (correct_g.to(torch.float64) + weight * length_term).reshape(-1).to(torch.float32)


def dapo_overlong_reward(
    correct: torch.Tensor, lengths: torch.Tensor, max_length: int, cache_length: int
) -> torch.Tensor:
    """DAPO's soft overlong punishment added to a 0/1 correctness reward (Yu et al. 2025, eq. 13).

    With ``L_max = max_length`` and ``L_cache = cache_length``::

        penalty = 0                                   if len <= L_max - L_cache
                = ((L_max - L_cache) - len) / L_cache if L_max - L_cache < len <= L_max
                = -1                                  if len > L_max
        r = 1[correct] + penalty
    """
    check_bool("correct", check_vector("correct", correct))
    lengths = check_lengths("lengths", lengths, size=correct.numel()).to(torch.float64)
    if not 0 < cache_length <= max_length:
        raise ValueError(f"cache_length must be in (0, max_length={max_length}], got {cache_length}")
    soft_start = max_length - cache_length
    penalty = ((soft_start - lengths) / cache_length).clamp(min=-1.0, max=0.0)
    penalty = torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty)
    return (correct.to(torch.float64) + penalty).to(torch.float32)


def _check_targets(target_lengths: torch.Tensor, size: int) -> torch.Tensor:
    return check_lengths("target_lengths", target_lengths, size=size).to(torch.float64)


def l1_exact_reward(
    correct: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, beta: float = 3e-4
) -> torch.Tensor:
    """L1-Exact (LCPO, Aggarwal & Welleck 2025, eq. 1): hit the budget ``n_gold`` in the prompt::

        r = 1[correct] - beta * |n_gold - len|
    """
    check_bool("correct", check_vector("correct", correct))
    lengths = check_lengths("lengths", lengths, size=correct.numel()).to(torch.float64)
    targets = _check_targets(target_lengths, correct.numel())
    return (correct.to(torch.float64) - beta * (targets - lengths).abs()).to(torch.float32)


def l1_max_reward(
    correct: torch.Tensor,
    lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    beta: float = 3e-4,
    delta: float = 0.5,
) -> torch.Tensor:
    """L1-Max (LCPO, Aggarwal & Welleck 2025, eq. 2): stay under the budget ``n_gold``::

        r = 1[correct] * clip(beta * (n_gold - len) + delta, 0, 1)
    """
    check_bool("correct", check_vector("correct", correct))
    lengths = check_lengths("lengths", lengths, size=correct.numel()).to(torch.float64)
    targets = _check_targets(target_lengths, correct.numel())
    budget_factor = (beta * (targets - lengths) + delta).clamp(0.0, 1.0)
    return (correct.to(torch.float64) * budget_factor).to(torch.float32)
