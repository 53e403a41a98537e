"""The reward registry: every registered reward on hand-computed cases, registration rules, a toy reward."""

import math
from types import SimpleNamespace

import pytest
import torch

from effreason._validation import check_unit_interval
from effreason.rewards import REWARDS, RewardInputs, RewardOption, register_reward, reward_options, rewards_using
from effreason.rewards.registry import check_fraction, check_non_negative
from effreason.train.scoring import rewards_and_advantages, sequence_rewards


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


CORRECT = torch.tensor([True, True, False, True, False, False])
LENGTHS = torch.tensor([10, 30, 20, 40, 50, 50])
"""Two groups of three: lengths (10, 30, 20) with two correct, (40, 50, 50) with one."""

HAND_COMPUTED = {
    # correct lengths 10, 30: mean 20, population std 10 -> z = -1, +1; a lone correct answer -> 1 - alpha / 2
    "paper": (dict(alpha=0.4), [1 - 0.4 * sigmoid(-10 / (10 + 1e-7)), 1 - 0.4 * sigmoid(10 / (10 + 1e-7)), 0.0, 0.8, 0.0, 0.0]),
    # lambda = 0.5 - (len - min) / (max - min): group 1 (0.5, -0.5, 0), group 2 (0.5, -0.5, -0.5); wrong ones keep min(0, lambda)
    "kimi": (dict(kimi_weight=0.5), [1.25, 0.75, 0.0, 1.25, -0.25, -0.25]),
    # L_max 40, L_cache floor(0.25 * 40) = 10: penalty starts above 30, -1 beyond 40
    "dapo-overlong": (dict(dapo_cache_fraction=0.25), [1.0, 1.0, 0.0, 0.0, -1.0, -1.0]),
    # 1[correct] - beta * |40 - len|
    "l1-exact": (dict(l1_beta=0.01), [0.7, 0.9, -0.2, 1.0, -0.1, -0.1]),
    # 1[correct] * clip(beta * (40 - len) + delta, 0, 1)
    "l1-max": (dict(l1_beta=0.01, l1_delta=0.5), [0.8, 0.6, 0.0, 0.5, 0.0, 0.0]),
    # 1[correct and len <= 40]
    "truncation": (dict(), [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
    # L_T = floor(0.5 * 40) = 20: correct and within 20 tokens earns the bonus 0.5
    "laser": (dict(laser_target=0.5, laser_bonus=0.5), [1.5, 1.0, 0.0, 1.0, 0.0, 0.0]),
    # no state yet: every band's target is L_T = floor(1.0 * 40) = 40
    "laser-d": (dict(laser_target=1.0, laser_bonus=0.25), [1.25, 1.25, 0.0, 1.25, 0.0, 0.0]),
    # solve rates 2/3 and 1/3 (>= the floor 1/k): 1[correct] - 0.8 * p * len / 40
    "alp": (dict(alp_beta=0.8), [1 - 0.8 * (2 / 3) * 10 / 40, 1 - 0.8 * (2 / 3) * 30 / 40, -0.8 * (2 / 3) * 20 / 40,
                                 1 - 0.8 * (1 / 3) * 40 / 40, -0.8 * (1 / 3) * 50 / 40, -0.8 * (1 / 3) * 50 / 40]),
    # SOL = shortest correct: 10 and 40; 2 * 1[correct] - 0.01 * |len - SOL|
    "shorterbetter": (dict(shorterbetter_alpha=2.0, shorterbetter_beta=0.01), [2.0, 1.8, -0.1, 2.0, -0.1, -0.1]),
}


def test_every_registered_reward_has_a_hand_computed_case():
    assert set(HAND_COMPUTED) == set(REWARDS)


@pytest.mark.parametrize("name", sorted(HAND_COMPUTED))
def test_registered_reward_hand_computed(name):
    options, expected = HAND_COMPUTED[name]
    reward = REWARDS[name]
    assert set(options) == {option.name for option in reward.options}
    got = reward(RewardInputs(CORRECT, LENGTHS, group_size=3, budget=40), **options)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))


def test_only_the_paper_reward_is_fused():
    assert [name for name, reward in REWARDS.items() if reward.fused] == ["paper"]


def test_shared_options_are_listed_once():
    assert [option.name for option in reward_options()] == [
        "alpha", "kimi_weight", "dapo_cache_fraction", "l1_beta", "l1_delta", "laser_target", "laser_bonus", "alp_beta",
        "shorterbetter_alpha", "shorterbetter_beta"]
    assert rewards_using("l1_beta") == ("l1-exact", "l1-max")
    assert rewards_using("l1_delta") == ("l1-max",)


def test_option_values_prefer_live_values():
    settings = SimpleNamespace(alpha=0.2, l1_beta=0.1, l1_delta=0.3)
    assert REWARDS["paper"].option_values(settings, alpha=0.05) == {"alpha": 0.05}
    assert REWARDS["l1-max"].option_values(settings, alpha=0.05) == {"l1_beta": 0.1, "l1_delta": 0.3}


@pytest.mark.parametrize(
    "check, good, bad, message",
    [
        (check_non_negative, [0, 0.0, 2.5], [-1e-9, math.inf, math.nan, True, "1"], "opt must be a finite number >= 0"),
        (check_unit_interval, [0, 0.5, 1], [-0.1, 1.1, math.nan, False], r"opt must be a number in \[0, 1\]"),
        (check_fraction, [1e-9, 1], [0, 1.5, None], r"opt must be a number in \(0, 1\]"),
    ],
)
def test_option_checks_name_the_option(check, good, bad, message):
    for value in good:
        check("opt", value)
    for value in bad:
        with pytest.raises(ValueError, match=message):
            check("opt", value)


# ----------------------------------------------------------------------------- adding a reward


@pytest.fixture
def registry_scratch():
    """Rewards registered inside the test are removed afterwards."""
    before = dict(REWARDS)
    yield
    REWARDS.clear()
    REWARDS.update(before)


SHORTEST_BONUS = RewardOption("shortest_bonus", 0.5, "bonus of the group's shortest correct answer", check=check_non_negative)


def test_a_toy_reward_is_one_function_plus_its_registration(registry_scratch):
    @register_reward("shortest-correct", source="a test", options=(SHORTEST_BONUS,))
    def shortest_correct(inputs: RewardInputs, *, shortest_bonus: float) -> torch.Tensor:
        """1[correct], plus ``shortest_bonus`` for the shortest correct answer of its group."""
        lengths = inputs.lengths.masked_fill(~inputs.correct, torch.iinfo(torch.int64).max).view(-1, inputs.group_size)
        shortest = (lengths == lengths.min(dim=1, keepdim=True).values).reshape(-1) & inputs.correct
        return inputs.correct.float() + shortest_bonus * shortest.float()

    assert "shortest-correct" in REWARDS and reward_options()[-1] is SHORTEST_BONUS
    config = SimpleNamespace(reward="shortest-correct", advantage="rloo", group_size=3, budget=40, shortest_bonus=0.5)
    rewards = sequence_rewards(CORRECT, LENGTHS, config, alpha=0.2)
    torch.testing.assert_close(rewards, torch.tensor([1.5, 1.0, 0.0, 1.5, 0.0, 0.0]))
    _, advantages = rewards_and_advantages(CORRECT, LENGTHS, config, alpha=0.2)
    torch.testing.assert_close(advantages, torch.tensor([1.0, 0.25, -1.25, 1.5, -0.75, -0.75]))  # r_i - mean of the others


def test_registration_errors(registry_scratch):
    with pytest.raises(ValueError, match="'kimi' is already registered"):
        register_reward("kimi", source="a test")(lambda inputs: inputs.correct.float())

    with pytest.raises(ValueError, match=r"takes \('scale',\) after the inputs, its options are \('shortest_bonus',\)"):
        @register_reward("misnamed", source="a test", options=(SHORTEST_BONUS,))
        def misnamed(inputs, *, scale):
            return inputs.correct.float()

    other_beta = RewardOption("l1_beta", 1.0, "another beta", check=check_non_negative)
    with pytest.raises(ValueError, match="option 'l1_beta' is already registered"):
        @register_reward("clash", source="a test", options=(other_beta,))
        def clash(inputs, *, l1_beta):
            return inputs.correct.float()
    assert set(REWARDS) == set(HAND_COMPUTED)
