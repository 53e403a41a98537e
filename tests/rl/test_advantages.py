"""RLOO, GRPO and Dr. GRPO advantages."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effreason import advantages


def test_rloo_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.9, 0.0])
    got = advantages.rloo_advantages(rewards, group_size=3)
    expected = torch.tensor([1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5, 0.9 - 0.45, 0.9 - 0.45, 0.0 - 0.9])
    torch.testing.assert_close(got, expected)


def test_grpo_and_dr_grpo_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(advantages.dr_grpo_advantages(rewards, 2), torch.tensor([0.5, -0.5, 0.5, -0.5]))
    std = torch.tensor([1.0, 0.0]).std()
    torch.testing.assert_close(
        advantages.grpo_advantages(rewards, 2), torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-6)
    )
    torch.testing.assert_close(advantages.grpo_advantages(torch.ones(4), 2), torch.zeros(4))


@pytest.mark.parametrize(
    "rewards, group_size, message",
    [
        (torch.ones(4), 1, "group_size must be >= 2"),
        (torch.ones(5), 2, "divisible by group_size"),
        (torch.tensor([1.0, float("nan")]), 2, "rewards must be finite"),
        (torch.tensor([1, 0]), 2, "rewards must be a floating"),
        (torch.ones(2, 2), 2, "rewards must be 1-D"),
    ],
)
def test_rloo_bad_input(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        advantages.rloo_advantages(rewards, group_size)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 8), st.integers(1, 5), st.data())
def test_rloo_sums_to_zero_per_group(group_size, num_groups, data):
    values = data.draw(st.lists(st.floats(-10, 10), min_size=group_size * num_groups, max_size=group_size * num_groups))
    got = advantages.rloo_advantages(torch.tensor(values, dtype=torch.float64), group_size)
    torch.testing.assert_close(got.double().view(-1, group_size).sum(1), torch.zeros(num_groups, dtype=torch.float64), atol=1e-5, rtol=0)
