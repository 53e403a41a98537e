"""The rewards and the advantage the recipes add, on small hand-computed cases (numbers worked out in the comments)."""

import math

import pytest
import torch

from effreason.advantages import batch_std_advantages, grpo_advantages
from effreason.rewards import (
    REWARDS, RewardInputs, alp_reward, choose_band_targets, laser_step_reward, sample_optimal_lengths,
    shorterbetter_reward, truncation_reward,
)
from effreason.rewards.laser import difficulty_bands


def close(got, expected):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype))


# ----------------------------------------------------------------------------- truncation (DLER, ThinkPrune)


def test_truncation_pays_only_correct_answers_within_the_limit():
    correct = torch.tensor([True, True, True, False])
    close(truncation_reward(correct, torch.tensor([9, 10, 11, 3]), limit=10), [1.0, 1.0, 0.0, 0.0])  # 10 <= 10 is within


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_truncation_limit_must_be_a_positive_int(limit):
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        truncation_reward(torch.tensor([True]), torch.tensor([1]), limit)


# ----------------------------------------------------------------------------- LASER, LASER-D


def test_laser_step_reward_per_sample_targets():
    # bonus 0.5 when correct and len <= its own target: 10 <= 12 yes, 20 <= 12 no, 20 <= 25 yes, wrong never
    got = laser_step_reward(torch.tensor([True, True, True, False]), torch.tensor([10, 20, 20, 5]),
                            torch.tensor([12, 12, 25, 25]), bonus=0.5)
    close(got, [1.5, 1.0, 1.5, 0.0])


def test_difficulty_bands_from_group_accuracy():
    # accuracies 3/3, 2/3 -> easy (>= 2/3); 1/3 -> medium (>= 1/3); 0/3 -> hard
    correct = torch.tensor([True, True, True, True, True, False, True, False, False, False, False, False])
    assert difficulty_bands(correct, 3).tolist() == [0, 0, 1, 2]


def test_band_targets_keep_one_correct_answer_expected():
    """k = 6, budget 160: candidates 10, 20, ..., 160; the fewest correct per group is floor(2k/3) = 4 (easy),
    floor(k/3) = 2 (medium), 1 (hard); the target is the shortest L with floor(coverage(L) * n) >= 1."""
    correct = torch.tensor([True] * 5 + [False] + [True] * 3 + [False] * 3 + [True] + [False] * 5)
    lengths = torch.tensor([10, 20, 30, 40, 50, 60,        # easy: coverage >= 1/4 needs 2 of 6 -> L = 20
                            15, 25, 35, 45, 55, 65,        # medium: coverage >= 1/2 needs 3 of 6 (35) -> L = 40
                            70, 80, 90, 100, 110, 200])    # hard: coverage 1 needs 200 > 160 -> the budget
    assert choose_band_targets(correct, lengths, 6, 160) == {"easy": 20, "medium": 40, "hard": 160}


def test_band_targets_without_a_group_in_a_band_are_the_budget():
    # k = 2: n_easy = floor(4/3) = 1, so the easy target covers all its samples (5); no medium or hard group
    assert choose_band_targets(torch.tensor([True, True]), torch.tensor([3, 5]), 2, 16) == {"easy": 5, "medium": 16, "hard": 16}


def test_laser_d_reads_its_targets_from_the_state_and_chooses_the_next():
    correct = torch.tensor([True, True, False, True, False, False])  # group accuracies 2/3 (easy), 1/3 (medium)
    lengths = torch.tensor([10, 30, 20, 40, 50, 50])
    reward = REWARDS["laser-d"]
    state = {"targets": {"easy": 15, "medium": 45, "hard": 60}}
    inputs = RewardInputs(correct, lengths, group_size=3, budget=40, state=state)
    # easy target 15: 10 earns the bonus, 30 not; medium target 45: 40 earns it
    close(reward(inputs, laser_target=0.25, laser_bonus=0.5), [1.5, 1.0, 0.0, 1.5, 0.0, 0.0])
    assert reward.next_state(inputs, laser_target=0.25, laser_bonus=0.5) == {"targets": choose_band_targets(correct, lengths, 3, 40)}


# ----------------------------------------------------------------------------- ALP


def test_alp_penalty_scales_with_the_solve_rate():
    # k = 4, N = 100, beta = 1: group 1 solve rate 3/4, group 2 solves nothing -> floor 1/4
    correct = torch.tensor([True, True, True, False, False, False, False, False])
    lengths = torch.tensor([40, 80, 20, 60, 40, 80, 20, 60])
    got = alp_reward(correct, lengths, group_size=4, beta=1.0, norm_length=100.0)
    close(got, [1 - 0.75 * 0.4, 1 - 0.75 * 0.8, 1 - 0.75 * 0.2, -0.75 * 0.6,
                -0.25 * 0.4, -0.25 * 0.8, -0.25 * 0.2, -0.25 * 0.6])


def test_alp_uses_the_budget_as_its_normalising_length():
    inputs = RewardInputs(torch.tensor([True, True]), torch.tensor([10, 30]), group_size=2, budget=40)
    close(REWARDS["alp"](inputs, alp_beta=0.4), [1 - 0.4 * 10 / 40, 1 - 0.4 * 30 / 40])  # solve rate 1


# ----------------------------------------------------------------------------- ShorterBetter


def test_sample_optimal_length_is_the_shortest_correct_else_the_mean():
    correct = torch.tensor([False, True, True, False, False, False])
    lengths = torch.tensor([5, 30, 20, 10, 20, 60])
    close(sample_optimal_lengths(correct, lengths, 3), [20.0, 30.0])  # shortest correct 20 (not the wrong 5); mean 30


def test_shorterbetter_reward():
    correct = torch.tensor([False, True, True, False, False, False])
    lengths = torch.tensor([5, 30, 20, 10, 20, 60])
    # SOL 20: (0 - 0.1*15, 2 - 0.1*10, 2 - 0); SOL 30: (-0.1*20, -0.1*10, -0.1*30)
    close(shorterbetter_reward(correct, lengths, 3, alpha=2.0, beta=0.1), [-1.5, 1.0, 2.0, -2.0, -1.0, -3.0])


# ----------------------------------------------------------------------------- batch-wise normalisation (DLER)


def test_batch_std_advantage_uses_one_std_for_the_batch():
    # c = r - group mean = (0.5, -0.5, 0.05, -0.05); mean 0; sample std sqrt(0.505 / 3)
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.0])
    std = math.sqrt(0.505 / 3)
    close(batch_std_advantages(rewards, 2, eps=0.0), [0.5 / std, -0.5 / std, 0.05 / std, -0.05 / std])
    # GRPO gives both groups the same +-0.707: the nearly-tied group is blown up to a full signal
    close(grpo_advantages(rewards, 2, eps=0.0), [0.5 ** 0.5, -(0.5 ** 0.5), 0.5 ** 0.5, -(0.5 ** 0.5)])


def test_batch_std_advantage_needs_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples"):
        batch_std_advantages(torch.tensor([1.0]), 1)
