"""The rewards' options as TrainConfig fields and flags: choices, defaults, validation, reaching the reward, resume."""

import dataclasses
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from effreason.rewards import REWARDS, reward_options
from effreason.train.__main__ import main
from effreason.train.config import TrainConfig, build_parser, config_from_args, resolve_config
from effreason.train.scoring import sequence_rewards, uses_fused_reward

REPO = Path(__file__).resolve().parents[2]
CORRECT = torch.tensor([True, True, False, True])
LENGTHS = torch.tensor([4, 12, 8, 20])
BUDGET = 10


def _flags(parser) -> dict:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_reward_choices_are_exactly_the_registry():
    reward_flag = _flags(build_parser())["--reward"]
    assert tuple(reward_flag.choices) == tuple(REWARDS)
    assert all(f"{name} ({reward.source})" in reward_flag.help for name, reward in REWARDS.items())
    for name in REWARDS:
        assert config_from_args(["--reward", name]).reward == name


def test_every_reward_option_is_a_field_and_a_flag_with_its_default():
    fields = {config_field.name: config_field for config_field in dataclasses.fields(TrainConfig)}
    flags = _flags(build_parser())
    config = TrainConfig()
    for option in reward_options():
        assert fields[option.name].default == option.default == getattr(config, option.name)
        assert option.help in flags["--" + option.name.replace("_", "-")].help


def test_defaults_are_the_values_the_rewards_had_before_they_were_options():
    config = TrainConfig()
    assert (config.alpha, config.kimi_weight, config.dapo_cache_fraction, config.l1_beta, config.l1_delta) == (0.2, 1.0, 0.25, 3e-4, 0.5)


@pytest.mark.parametrize(
    "reward, flag, value, expected",
    [
        # 1[c] - beta |10 - len|
        ("l1-exact", "--l1-beta", 0.5, [1 - 0.5 * 6, 1 - 0.5 * 2, -0.5 * 2, 1 - 0.5 * 10]),
        # 1[c] clip(beta (10 - len) + delta, 0, 1), delta 0.5 by default
        ("l1-max", "--l1-beta", 0.05, [0.05 * 6 + 0.5, -0.05 * 2 + 0.5, 0.0, 0.0]),
        # ... beta 3e-4 by default
        ("l1-max", "--l1-delta", 0.9, [3e-4 * 6 + 0.9, -3e-4 * 2 + 0.9, 0.0, -3e-4 * 10 + 0.9]),
        # L_cache = 0.5 * 10 = 5: penalty (5 - len) / 5 in [-1, 0], -1 above 10
        ("dapo-overlong", "--dapo-cache-fraction", 0.5, [1.0, 1 - 1.0, (5 - 8) / 5, 1 - 1.0]),
        # lambda = 0.5 - (len - 4) / 16 = (0.5, 0, 0.25, -0.5); the wrong answer keeps min(0, lambda)
        ("kimi", "--kimi-weight", 0.3, [1 + 0.3 * 0.5, 1.0, 0.0, 1 - 0.3 * 0.5]),
    ],
)
def test_a_flag_reaches_its_reward(reward, flag, value, expected):
    config = config_from_args(["--reward", reward, flag, str(value), "--length-budget", str(BUDGET), "--group-size", "4"])
    default = config_from_args(["--reward", reward, "--length-budget", str(BUDGET), "--group-size", "4"])
    got = sequence_rewards(CORRECT, LENGTHS, config, alpha=config.alpha)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))
    assert not torch.equal(got, sequence_rewards(CORRECT, LENGTHS, default, alpha=default.alpha))


def test_the_alpha_flag_reaches_the_paper_reward_unless_the_controller_moved_it():
    config = config_from_args(["--alpha", "0.6", "--group-size", "4"])
    # correct lengths 4, 12, 20: mean 12, population std sqrt(128 / 3); r = 1 - alpha * sigmoid(z)
    z = 8 / (math.sqrt(128 / 3) + 1e-7)
    expected = [1 - 0.6 / (1 + math.exp(z)), 1 - 0.6 / 2, 0.0, 1 - 0.6 / (1 + math.exp(-z))]
    torch.testing.assert_close(sequence_rewards(CORRECT, LENGTHS, config, alpha=config.alpha), torch.tensor(expected))
    torch.testing.assert_close(sequence_rewards(CORRECT, LENGTHS, config, alpha=0.0), CORRECT.float())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(alpha=1.5), r"alpha must be a number in \[0, 1\]"),
        (dict(kimi_weight=-1.0), "kimi_weight must be a finite number >= 0"),
        (dict(kimi_weight=float("nan")), "kimi_weight must be a finite number >= 0"),
        (dict(dapo_cache_fraction=0.0), r"dapo_cache_fraction must be a number in \(0, 1\]"),
        (dict(l1_beta=-3e-4), "l1_beta must be a finite number >= 0"),
        (dict(l1_delta=1.5), r"l1_delta must be a number in \[0, 1\]"),
        (dict(l1_delta=True), r"l1_delta must be a number in \[0, 1\]"),
    ],
)
def test_bad_option_values_name_the_option(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_a_bad_option_flag_is_a_cli_error_naming_it(capsys):
    assert main(["--reward", "l1-max", "--l1-delta", "2", "--steps", "1"]) == 1
    assert "l1_delta must be a number in [0, 1], got 2.0" in capsys.readouterr().err


def test_options_are_saved_and_a_resumed_run_uses_them(tmp_path):
    (tmp_path / "config.json").write_text(TrainConfig(reward="l1-max", l1_beta=0.01, l1_delta=0.25).to_json())
    resumed = resolve_config({"resume": str(tmp_path)})
    assert (resumed.reward, resumed.l1_beta, resumed.l1_delta) == ("l1-max", 0.01, 0.25)
    assert resolve_config({"resume": str(tmp_path), "l1_delta": 0.75}).l1_delta == 0.75


@pytest.mark.parametrize(
    "reward, advantage, fused",
    [("paper", "rloo", True), ("paper", "grpo", False), ("kimi", "rloo", False), ("l1-max", "dr-grpo", False)],
)
def test_the_fused_path_follows_the_registry(reward, advantage, fused):
    assert uses_fused_reward(TrainConfig(reward=reward, advantage=advantage)) is fused


def test_a_reward_registered_before_the_config_is_built_gets_its_flag():
    """A user's reward, registered before ``effreason.train.config`` is imported: --reward and its option flag work."""
    script = textwrap.dedent("""
        import torch
        from effreason.rewards import RewardInputs, RewardOption, register_reward
        from effreason.rewards.registry import check_non_negative

        SCALE = RewardOption("toy_scale", 1.0, "reward lost per token", check=check_non_negative)

        @register_reward("toy", source="a test", options=(SCALE,))
        def toy(inputs: RewardInputs, *, toy_scale: float) -> torch.Tensor:
            return inputs.correct.float() - toy_scale * inputs.lengths.float()

        from effreason.train.config import config_from_args
        from effreason.train.scoring import sequence_rewards

        config = config_from_args(["--reward", "toy", "--toy-scale", "0.25", "--group-size", "2"])
        print(config.toy_scale, sequence_rewards(torch.tensor([True, False]), torch.tensor([2, 4]), config, config.alpha).tolist())
        try:
            config_from_args(["--reward", "toy", "--toy-scale", "-1"])
        except ValueError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["0.25 [0.5, -1.0]", "toy_scale must be a finite number >= 0, got -1.0"]
