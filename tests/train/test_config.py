"""TrainConfig validation, presets and the generated CLI."""

import dataclasses

import pytest

from effreason.train.config import PRESETS, TrainConfig, build_parser, config_from_args, resolve_config


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(group_size=1), "group_size"),
        (dict(group_size=0, advantage="dr-grpo"), "group_size"),
        (dict(prompts_per_step=6, mini_batches=4), "mini_batches"),
        (dict(lr=0.0), "lr"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(clip_eps_low=1.0), "clip_eps_low"),
        (dict(kl_coef=-1.0), "kl_coef"),
        (dict(reward="nope"), "reward"),
        (dict(loss_agg="sum"), "loss_agg"),
        (dict(steps=0), "steps"),
        (dict(tis_cap=0.5), "tis_cap"),
        (dict(target_token_ratio=0.0), "target_token_ratio"),
        (dict(target_token_ratio=0.6, reward="kimi"), "target_token_ratio"),
        (dict(preset="paper-70b", model="/m"), "preset"),
        (dict(preset="paper-1.5b"), "model"),
        (dict(steps=True), "steps"),
    ],
)
def test_invalid_values_name_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        TrainConfig(**overrides)


def test_defaults_are_the_paper_objective():
    config = TrainConfig()
    assert (config.alpha, config.group_size, config.reward, config.advantage) == (0.2, 8, "paper", "rloo")
    assert config.clip_eps == (0.2, 0.2)


def test_every_field_has_a_kebab_case_flag_with_help():
    parser = build_parser()
    flags = {option: action for action in parser._actions for option in action.option_strings}
    for config_field in dataclasses.fields(TrainConfig):
        flag = "--" + config_field.name.replace("_", "-")
        assert flag in flags, flag
        assert flags[flag].help


def test_flags_parse_to_typed_fields():
    config = config_from_args(["--alpha", "0.1", "--group-size", "4", "--loss-agg", "seq-mean-token-sum-norm",
                               "--target-token-ratio", "0.6", "--quiet", "--model", "/x"])
    assert config.alpha == 0.1 and config.group_size == 4 and config.quiet is True
    assert config.loss_agg == "seq-mean-token-sum-norm" and config.target_token_ratio == 0.6 and config.model == "/x"


def test_preset_then_explicit_flags():
    config = config_from_args(["--preset", "paper-7b", "--alpha", "0.4", "--steps", "3", "--model", "/m"])
    assert config.lr == PRESETS["paper-7b"]["lr"] == 2e-6
    assert (config.prompts_per_step, config.group_size, config.kl_coef, config.kl_estimator) == (32, 8, 0.001, "k1")
    assert config.alpha == 0.4 and config.steps == 3


def test_unknown_flag_value_is_rejected():
    with pytest.raises(SystemExit):
        config_from_args(["--reward", "bogus"])


def test_resume_uses_the_saved_config(tmp_path):
    (tmp_path / "config.json").write_text(TrainConfig(alpha=0.05, steps=7).to_json())
    config = resolve_config({"resume": str(tmp_path)})
    assert config.alpha == 0.05 and config.steps == 7 and config.out == str(tmp_path)
    with pytest.raises(ValueError, match="resume"):
        resolve_config({"resume": str(tmp_path / "missing")})
