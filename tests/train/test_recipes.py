"""``--recipe``: every recipe is a valid configuration, flag precedence, ThinkPrune's schedule, the
rollout-token budget, and short real runs of the stateful and the filtering recipes on the tiny model."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from effreason.recipes import RECIPES
from effreason.train import config_from_args, run
from effreason.train.config import TrainConfig, parse_token_limit_schedule, resolve_config
from effreason.train.loop import Trainer

from train_helpers import crash_at_step, tiny_run_flags

FIELDS = {config_field.name for config_field in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config_with_its_source(name):
    recipe = RECIPES[name]
    assert set(recipe.settings()) <= FIELDS and (recipe.knob is None or recipe.knob in FIELDS)
    assert "arXiv" in recipe.settings.__doc__ and "arXiv" in recipe.source
    config = config_from_args(["--recipe", name])
    assert config.recipe == name
    assert all(getattr(config, field) == value for field, value in recipe.settings().items())


def test_explicit_flags_win_over_the_recipe():
    config = config_from_args(["--recipe", "dler", "--max-new-tokens", "96", "--clip-eps-high", "0.3"])
    assert (config.max_new_tokens, config.clip_eps_high) == (96, 0.3)
    assert (config.reward, config.advantage, config.group_filter) == ("truncation", "group-mean-batch-std", "dynamic-sampling")


def test_the_recipe_applies_over_a_preset():
    config = config_from_args(["--preset", "paper-1.5b", "--model", "/m", "--recipe", "gfpo"])
    assert (config.group_size, config.gfpo_keep, config.lr, config.prompts_per_step) == (16, 8, 5e-6, 32)


def test_the_recipe_is_saved_and_a_resumed_run_keeps_its_settings(tmp_path):
    (tmp_path / "config.json").write_text(resolve_config({"recipe": "thinkprune"}).to_json())
    resumed = resolve_config({"resume": str(tmp_path)})
    assert (resumed.recipe, resumed.max_new_tokens, resumed.token_limit_schedule) == ("thinkprune", 224, "0:1,14:0.75,28:0.5")
    assert resolve_config({"resume": str(tmp_path), "max_new_tokens": 200}).max_new_tokens == 200
    with pytest.raises(ValueError, match="keeps the recipe it started with"):
        resolve_config({"resume": str(tmp_path), "recipe": "dler"})


@pytest.mark.parametrize("settings, message", [
    (dict(recipe="dler", method="dpo"), "rl method"),
    (dict(group_filter="gfpo-shortest", method="rs-sft"), "rl method"),
    (dict(recipe="nope"), "recipe must be one of"),
    (dict(group_filter="gfpo-shortest", group_size=8, gfpo_keep=8), "gfpo_keep must be in"),
    (dict(group_filter="gfpo-shortest", gfpo_keep=1), r"gfpo_keep must be in \[2, "),
    (dict(dynamic_sampling_rounds=-1), "dynamic_sampling_rounds"),
    (dict(rollout_token_budget=0), "rollout_token_budget"),
    (dict(token_limit_schedule="1:1"), "token_limit_schedule"),
])
def test_bad_recipe_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(settings)


def test_token_limit_schedule_sets_the_rollout_limit_and_the_budget():
    config = TrainConfig(max_new_tokens=224, token_limit_schedule="0:1,14:0.75,28:0.5")
    assert [config.max_tokens_at(step) for step in (0, 13, 14, 27, 28, 100)] == [224, 224, 168, 168, 112, 112]
    assert config.budget_at(20) == 168 and TrainConfig(token_limit_schedule="0:0.5", length_budget=50).budget_at(0) == 50
    assert TrainConfig().max_tokens_at(1000) == 256


@pytest.mark.parametrize("text", ["", "0", "0:1,0:0.5", "1:1", "0:1,5:0", "0:1.5", "0:1,4:0.5,2:0.2", "a:b"])
def test_bad_token_limit_schedules(text):
    with pytest.raises(ValueError, match="token_limit_schedule"):
        parse_token_limit_schedule(text)


# ----------------------------------------------------------------------------- short real runs on the tiny model


@pytest.fixture
def graded_by_parity(monkeypatch):
    """Random tiny models never solve a problem: grade by response parity so rewards differ within groups."""
    import effreason.train.data as data

    monkeypatch.setattr(data, "score_response", lambda text, problem, answer_kind="boxed": len(text) % 2 == 0)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_laser_d_state_is_carried_and_survives_a_resume(tiny_model_dir, toy_data_file, tmp_path, monkeypatch, graded_by_parity):
    settings = dict(recipe="laser-d", steps=2, eval_problems=0, group_size=4, max_new_tokens=16)
    whole = run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "whole", **settings)))
    state = json.loads((whole / "checkpoint" / "state.json").read_text())["reward_state"]
    assert set(state["targets"]) == {"easy", "medium", "hard"} and all(1 <= t <= 16 for t in state["targets"].values())

    original = Trainer._one_step
    crash_at_step(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="crash"):
        run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "crashed", **settings)))
    monkeypatch.setattr(Trainer, "_one_step", original)
    resumed = run(resolve_config({"resume": str(tmp_path / "crashed")}))
    assert json.loads((resumed / "checkpoint" / "state.json").read_text())["reward_state"] == state
    first, second = load_file(whole / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_gfpo_trains_on_the_kept_share_of_a_larger_group(tiny_model_dir, toy_data_file, tmp_path, graded_by_parity):
    out = run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "gfpo", recipe="gfpo", steps=1,
                                              eval_problems=0, group_size=4, gfpo_keep=2)))
    (step,) = _metrics(out)
    assert step["kept_fraction"] == 0.5 and step["optimizer_steps"] == 1 and step["sampling_rounds"] == 1


def test_dler_refills_then_skips_a_step_with_no_signal(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    """Nothing is ever correct: every group's rewards are equal, so every round is dropped; after the extra
    rounds the step takes no optimizer step, and every sampled token still counts."""
    import effreason.train.data as data

    monkeypatch.setattr(data, "score_response", lambda text, problem, answer_kind="boxed": False)
    out = run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "dler", recipe="dler", steps=1,
                                              eval_problems=0, dynamic_sampling_rounds=2)))
    (step,) = _metrics(out)
    assert (step["sampling_rounds"], step["kept_fraction"], step["optimizer_steps"]) == (3, 0.0, 0)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["prompts_consumed"] == 3 * 4 and state["rollout_tokens"] == step["rollout_tokens"] > 0


def test_the_rollout_token_budget_ends_the_run(tiny_model_dir, toy_data_file, tmp_path):
    out = run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "budget", steps=10, eval_problems=0,
                                              rollout_token_budget=1, checkpoint_every=5)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["rollout_tokens"] >= 1
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1


def test_thinkprune_tightens_the_rollout_limit_by_round(tiny_model_dir, toy_data_file, tmp_path):
    out = run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "prune", recipe="thinkprune", steps=2,
                                              eval_problems=0, max_new_tokens=8, token_limit_schedule="0:1,1:0.5")))
    first, second = _metrics(out)
    assert (first["max_tokens"], second["max_tokens"]) == (8, 4) and second["mean_tokens"] <= 4
