"""L1's length-controlled rewards, LCPO (Aggarwal & Welleck 2025, "L1: Controlling How Long A Reasoning Model
Thinks With Reinforcement Learning", eq. 1 and 2); in training, the target ``n_gold`` is the length budget."""

from __future__ import annotations

import torch

from effreason._validation import check_lengths, check_unit_interval
from effreason.rewards._inputs import per_sample
from effreason.rewards.registry import RewardInputs, RewardOption, check_non_negative, register_reward

L1_BETA = RewardOption("l1_beta", 3e-4, "reward lost per token of distance to the budget (L1's alpha, eq. 1 and 2)",
                       check=check_non_negative)
L1_DELTA = RewardOption("l1_delta", 0.5, "reward of a correct answer exactly at the budget, in [0, 1] (L1's delta, eq. 2)",
                        check=check_unit_interval)


def _check_targets(target_lengths: torch.Tensor, size: int) -> torch.Tensor:
    return check_lengths("target_lengths", target_lengths, size=size).to(torch.float64)


def l1_exact_reward(
    correct: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, beta: float = L1_BETA.default
) -> torch.Tensor:
    """L1-Exact (eq. 1): hit the budget ``n_gold`` in the prompt::

        r = 1[correct] - beta * |n_gold - len|
    """
    correct, lengths = per_sample(correct, lengths)
    targets = _check_targets(target_lengths, correct.numel())
    return (correct.to(torch.float64) - beta * (targets - lengths).abs()).to(torch.float32)


def l1_max_reward(
    correct: torch.Tensor,
    lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    beta: float = L1_BETA.default,
    delta: float = L1_DELTA.default,
) -> torch.Tensor:
    """L1-Max (eq. 2): stay under the budget ``n_gold``::

        r = 1[correct] * clip(beta * (n_gold - len) + delta, 0, 1)
    """
    correct, lengths = per_sample(correct, lengths)
    targets = _check_targets(target_lengths, correct.numel())
    budget_factor = (beta * (targets - lengths) + delta).clamp(0.0, 1.0)
    return (correct.to(torch.float64) * budget_factor).to(torch.float32)


def _budget_targets(inputs: RewardInputs) -> torch.Tensor:
    """(S,) float64 targets, every one the budget."""
    return torch.full(inputs.lengths.shape, float(inputs.budget), dtype=torch.float64, device=inputs.lengths.device)


@register_reward("l1-exact", source="Aggarwal & Welleck 2025", options=(L1_BETA,))
def l1_exact(inputs: RewardInputs, *, l1_beta: float) -> torch.Tensor:
    """``l1_exact_reward`` with the budget as every sample's target."""
    return l1_exact_reward(inputs.correct, inputs.lengths, _budget_targets(inputs), l1_beta)


@register_reward("l1-max", source="Aggarwal & Welleck 2025", options=(L1_BETA, L1_DELTA))
def l1_max(inputs: RewardInputs, *, l1_beta: float, l1_delta: float) -> torch.Tensor:
    """``l1_max_reward`` with the budget as every sample's target."""
    return l1_max_reward(inputs.correct, inputs.lengths, _budget_targets(inputs), l1_beta, l1_delta)
