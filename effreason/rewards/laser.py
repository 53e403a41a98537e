"""LASER and LASER-D, length-based step rewards (Liu et al. 2025, "Learn to Reason Efficiently with Adaptive
Length-based Reward Shaping", arXiv 2505.15612).

LASER pays a bonus to a correct response no longer than a target length ``L_T``. LASER-D makes the
target difficulty-aware and dynamic: a prompt's difficulty band comes from its group's accuracy this
step, and each band's target is re-chosen from recent rollouts of the current model, so easy prompts
get tight targets and hard ones loose targets. LASER-D chooses the targets from a monitoring set every
few steps; here the previous step's rollout is the monitoring set (``laser_d_next_state``), the targets
live in the reward's state and the first step uses ``L_T`` for every band.
"""

from __future__ import annotations

import math

import torch

from effreason._validation import check_bool, check_group_size, check_lengths, check_vector
from effreason.rewards._inputs import grouped, per_sample
from effreason.rewards.registry import RewardInputs, RewardOption, check_fraction, check_non_negative, register_reward

LASER_TARGET = RewardOption(
    "laser_target", 0.25,
    "LASER's target length L_T as a fraction of the budget, in (0, 1] (4096 / 16384, one of LASER's targets); "
    "laser-d: every band's target until the first step has chosen them",
    check=check_fraction,
)
LASER_BONUS = RewardOption("laser_bonus", 0.5, "LASER's bonus (lambda) of a correct response within its target length",
                           check=check_non_negative)

BANDS = ("easy", "medium", "hard")
"""LASER-D's difficulty bands: group accuracy >= 2/3, in [1/3, 2/3), below 1/3."""
THRESHOLD_STEPS = 16
"""Candidate targets are the multiples of budget / 16 (LASER-D: 1,024-token steps of a 16,384-token budget)."""
EXPECTED_CORRECT = 1
"""LASER-D's expected correct responses within the target: each band keeps at least one on average."""


def laser_step_reward(correct: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, bonus: float) -> torch.Tensor:
    """LASER's step reward, (S,) float32: ``r = 1[correct] + bonus * 1[correct and len <= target]``.

    ``targets``: (S,) target length of each sample. (LASER's code scores a wrong answer -0.5; here it is
    0, as in every other reward of the registry.)
    """
    correct, lengths = per_sample(correct, lengths)
    targets = check_lengths("targets", targets, size=correct.numel()).to(torch.float64)
    within = correct & (lengths <= targets)
    return (correct.to(torch.float64) + bonus * within.to(torch.float64)).to(torch.float32)


def difficulty_bands(correct: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G,) int64 index into ``BANDS`` of every group, from the share of its samples that are correct."""
    check_bool("correct", check_vector("correct", correct))
    check_group_size(group_size, correct.numel())
    accuracy = correct.view(-1, group_size).to(torch.float64).mean(dim=1)  # (G,)
    return torch.where(accuracy >= 2 / 3, 0, torch.where(accuracy >= 1 / 3, 1, 2))


def choose_band_targets(correct: torch.Tensor, lengths: torch.Tensor, group_size: int, budget: int) -> dict[str, int]:
    """LASER-D's adaptive targets from one rollout: per band, the shortest candidate length ``L`` with

        floor(coverage_band(L) * n_band) >= 1,   n_easy = floor(2k/3), n_medium = floor(k/3), n_hard = 1

    where ``coverage_band(L)`` is the share of the band's samples (right or wrong) no longer than ``L``
    and ``n_band`` the fewest correct samples a group of the band has: the expected number of correct
    samples within ``L`` is at least one. Candidates are the multiples of ``budget / 16``; a band with no
    such length (or no group) gets the budget.
    """
    bands = difficulty_bands(correct, group_size)
    lengths_g = grouped(correct, lengths, group_size)[1]  # (G, k)
    candidates = sorted({math.ceil(budget * step / THRESHOLD_STEPS) for step in range(1, THRESHOLD_STEPS + 1)})
    least_correct = {"easy": (2 * group_size) // 3, "medium": group_size // 3, "hard": 1}
    targets = {}
    for index, band in enumerate(BANDS):
        band_lengths = lengths_g[bands == index].reshape(-1)
        covered = [length for length in candidates
                   if band_lengths.numel() and math.floor(float((band_lengths <= length).double().mean()) * least_correct[band]) >= EXPECTED_CORRECT]
        targets[band] = covered[0] if covered else budget
    return targets


def _band_targets_per_sample(inputs: RewardInputs, targets: dict[str, int]) -> torch.Tensor:
    """(S,) the target of each sample's band."""
    table = torch.tensor([targets[band] for band in BANDS], dtype=torch.float64)
    return table[difficulty_bands(inputs.correct, inputs.group_size)].repeat_interleave(inputs.group_size)


def _static_target(inputs: RewardInputs, laser_target: float) -> int:
    return max(1, math.floor(laser_target * inputs.budget))


@register_reward("laser", source="Liu et al. 2025", options=(LASER_TARGET, LASER_BONUS))
def laser(inputs: RewardInputs, *, laser_target: float, laser_bonus: float) -> torch.Tensor:
    """LASER: ``laser_step_reward`` with one target, ``floor(laser_target * budget)`` tokens."""
    targets = torch.full((inputs.correct.numel(),), float(_static_target(inputs, laser_target)), dtype=torch.float64)
    return laser_step_reward(inputs.correct, inputs.lengths, targets, laser_bonus)


def laser_d_next_state(inputs: RewardInputs, *, laser_target: float, laser_bonus: float) -> dict:
    """``{"targets": {band: tokens}}`` chosen from this step's rollout (``choose_band_targets``), for the next step."""
    return {"targets": choose_band_targets(inputs.correct, inputs.lengths, inputs.group_size, inputs.budget)}


@register_reward("laser-d", source="Liu et al. 2025", options=(LASER_TARGET, LASER_BONUS), next_state=laser_d_next_state)
def laser_d(inputs: RewardInputs, *, laser_target: float, laser_bonus: float) -> torch.Tensor:
    """LASER-D: ``laser_step_reward`` with the target of each sample's difficulty band, from the state
    (the targets chosen on the previous step's rollout), else ``floor(laser_target * budget)`` for all."""
    targets = inputs.state.get("targets") or {band: _static_target(inputs, laser_target) for band in BANDS}
    return laser_step_reward(inputs.correct, inputs.lengths, _band_targets_per_sample(inputs, targets), laser_bonus)
