"""The paper's reward and the alternative length rewards: hand-computed cases, bad input, properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effreason import rewards


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_paper_reward_hand_computed():
    correct = torch.tensor([True, True, False, True])
    lengths = torch.tensor([10, 20, 5, 30])
    # correct lengths 10, 20, 30: mean 20, population std sqrt(200/3)
    std = math.sqrt(200.0 / 3.0) + 1e-7
    expected = [1 - 0.2 * sigmoid(-10 / std), 1 - 0.2 * sigmoid(0.0), 0.0, 1 - 0.2 * sigmoid(10 / std)]
    got = rewards.length_penalized_reward(correct, lengths, group_size=4, alpha=0.2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize(
    "correct, lengths, expected",
    [
        ([False, False, False], [3, 9, 1], [0.0, 0.0, 0.0]),  # all incorrect
        ([False, True, False], [3, 9, 1], [0.0, 0.9, 0.0]),  # one correct -> 1 - alpha / 2
        ([True, True, True], [7, 7, 7], [0.9, 0.9, 0.9]),  # equal lengths -> z = 0
    ],
)
def test_paper_reward_edge_cases(correct, lengths, expected):
    got = rewards.length_penalized_reward(torch.tensor(correct), torch.tensor(lengths), group_size=3, alpha=0.2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor(expected))


def test_paper_reward_groups_are_independent():
    correct = torch.tensor([True, True, True, True])
    lengths = torch.tensor([1, 100, 50, 50])
    got = rewards.length_penalized_reward(correct, lengths, group_size=2, alpha=0.4)
    assert got[0] > got[1]
    torch.testing.assert_close(got[2:], torch.tensor([0.8, 0.8]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(correct=torch.tensor([1, 0]), lengths=torch.tensor([1, 2])), "correct must be a bool"),
        (dict(correct=torch.tensor([True, False]), lengths=torch.tensor([1, 2, 3])), "lengths must have 2"),
        (dict(correct=torch.tensor([True, False]), lengths=torch.tensor([1, -2])), "lengths must be >= 0"),
        (dict(correct=torch.tensor([True, False]), lengths=torch.tensor([1.0, float("nan")])), "lengths must be finite"),
        (dict(correct=torch.tensor([True, False, True])), "divisible by group_size"),
        (dict(alpha=1.5), "alpha must be a number in"),
        (dict(alpha=-0.1), "alpha must be a number in"),
        (dict(group_size=0), "group_size must be >= 1"),
        (dict(correct=torch.ones(2, 2, dtype=torch.bool)), "correct must be 1-D"),
    ],
)
def test_paper_reward_bad_input(kwargs, message):
    args = dict(correct=torch.tensor([True, False]), lengths=torch.tensor([1, 2]), group_size=2, alpha=0.2)
    args.update(kwargs)
    if "lengths" not in kwargs and args["lengths"].numel() != args["correct"].numel():
        args["lengths"] = torch.arange(args["correct"].numel())
    with pytest.raises(ValueError, match=message):
        rewards.length_penalized_reward(**args)


groups = st.integers(min_value=1, max_value=4).flatmap(
    lambda num_groups: st.integers(min_value=1, max_value=8).flatmap(
        lambda group_size: st.tuples(
            st.just(group_size),
            st.lists(st.booleans(), min_size=num_groups * group_size, max_size=num_groups * group_size),
            st.lists(st.integers(0, 5000), min_size=num_groups * group_size, max_size=num_groups * group_size),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(groups, st.floats(0.0, 1.0), st.integers(-1000, 1000))
def test_paper_reward_properties(group, alpha, shift):
    group_size, correct_list, length_list = group
    correct, lengths = torch.tensor(correct_list), torch.tensor(length_list)
    reward = rewards.length_penalized_reward(correct, lengths, group_size, alpha)
    assert torch.isfinite(reward).all()
    assert (reward[~correct] == 0).all()
    correct_reward = reward[correct].double()
    assert (correct_reward <= 1.0).all()
    if alpha > 0:
        assert (correct_reward > 1.0 - alpha - 1e-6).all()
    shifted = rewards.length_penalized_reward(correct, (lengths + shift + 1000), group_size, alpha)
    torch.testing.assert_close(shifted, reward, atol=1e-6, rtol=0)
    # longer correct answers never earn more than shorter ones of the same group
    reward_g, lengths_g, correct_g = reward.view(-1, group_size), lengths.view(-1, group_size), correct.view(-1, group_size)
    longer = (lengths_g[:, :, None] > lengths_g[:, None, :]) & correct_g[:, :, None] & correct_g[:, None, :]
    assert (reward_g[:, :, None] <= reward_g[:, None, :] + 1e-7)[longer].all()


def test_kimi_length_reward():
    correct = torch.tensor([True, False, True, False])
    lengths = torch.tensor([10, 30, 20, 10])
    # min 10, max 30: lambda = 0.5, -0.5, 0.0, 0.5
    got = rewards.kimi_length_reward(correct, lengths, group_size=4)
    torch.testing.assert_close(got, torch.tensor([1.5, -0.5, 1.0, 0.0]))
    equal = rewards.kimi_length_reward(correct, torch.full((4,), 7), group_size=4)
    torch.testing.assert_close(equal, correct.float())


def test_dapo_overlong_reward():
    correct = torch.tensor([True, True, True, False])
    lengths = torch.tensor([80, 90, 120, 95])
    got = rewards.dapo_overlong_reward(correct, lengths, max_length=100, cache_length=20)
    torch.testing.assert_close(got, torch.tensor([1.0, 0.5, 0.0, -0.75]))
    with pytest.raises(ValueError, match="cache_length"):
        rewards.dapo_overlong_reward(correct, lengths, max_length=100, cache_length=0)


def test_l1_rewards():
    correct = torch.tensor([True, True, False])
    lengths = torch.tensor([1000, 3000, 1000])
    targets = torch.tensor([2000, 2000, 2000])
    torch.testing.assert_close(
        rewards.l1_exact_reward(correct, lengths, targets, beta=1e-4), torch.tensor([0.9, 0.9, -0.1])
    )
    torch.testing.assert_close(
        rewards.l1_max_reward(correct, lengths, targets, beta=1e-4, delta=0.5), torch.tensor([0.6, 0.4, 0.0])
    )
    with pytest.raises(ValueError, match="target_lengths must have 3"):
        rewards.l1_max_reward(correct, lengths, targets[:2])
