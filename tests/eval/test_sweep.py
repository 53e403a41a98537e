"""``python -m effreason.sweep``: alphas, training hand-off, resumability, table and Pareto plot.

Training is replaced by a fake ``effreason.train.run`` that copies the tiny model into the run
folder (the real loop has its own tests); evaluation is real, on the tiny model.
"""

from __future__ import annotations

import json
import shutil

import pytest

import effreason.sweep as sweep
import effreason.train
from effreason.sweep import SweepConfig, config_from_argv, main, parse_alphas, parse_token_counts


@pytest.fixture
def fake_training(tiny_model_dir, monkeypatch):
    """Replace training by copying the tiny model; records every TrainConfig it was given."""
    configs = []

    def fake_run(config):
        configs.append(config)
        run_dir = config.out
        shutil.copytree(tiny_model_dir, f"{run_dir}/model", dirs_exist_ok=True)
        with open(f"{run_dir}/summary.json", "w") as handle:
            json.dump({"steps": config.steps}, handle)
        return run_dir

    monkeypatch.setattr(effreason.train, "run", fake_run)
    return configs


@pytest.fixture
def counted_evaluations(monkeypatch):
    calls = []
    real = sweep.evaluate_model

    def counting(model, datasets, config):
        calls.append(model)
        return real(model, datasets, config)

    monkeypatch.setattr(sweep, "evaluate_model", counting)
    return calls


def sweep_argv(tiny_model_dir, out):
    return ["--alphas", "0,0.2", "--out", str(out), "--model", str(tiny_model_dir), "--max-problems", "2",
            "--max-new-tokens", "4", "--temperature", "0", "--", "--steps", "3", "--group-size", "2"]


def test_baselines_join_the_table(tiny_model_dir, tmp_path, fake_training, counted_evaluations):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_model_dir, out)
    argv[1] = "0.2"
    argv[argv.index("--"):argv.index("--")] = ["--cutoffs", "2", "--prompt-budgets", "3"]
    assert main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert list(record["reports"]) == ["warm start", "cut-off 2", "prompt budget 3", "alpha=0.2"]
    assert record["reports"]["cut-off 2"]["settings"]["force_answer"] is True
    assert record["reports"]["prompt budget 3"]["datasets"]["toy"]["budget"]["budget"] == 3
    assert len(counted_evaluations) == 4 and [c.alpha for c in fake_training] == [0.2]


def test_sweep_trains_evaluates_and_resumes(tiny_model_dir, tmp_path, fake_training, counted_evaluations, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_model_dir, out)) == 0
    assert [(c.alpha, c.steps, c.group_size, c.model, c.eval_problems) for c in fake_training] == [
        (0.0, 3, 2, str(tiny_model_dir), 0), (0.2, 3, 2, str(tiny_model_dir), 0)]
    assert len(counted_evaluations) == 3
    table = capsys.readouterr().out
    assert "| warm start |" in table and "| alpha=0.2 |" in table
    record = json.loads((out / "sweep.json").read_text())
    assert list(record["reports"]) == ["warm start", "alpha=0", "alpha=0.2"]
    assert record["normalised"]["warm start"]["average"]["tokens_pct"] == pytest.approx(100.0)
    assert (out / "sweep.md").read_text().startswith("| model |")
    assert (out / "pareto.png").stat().st_size > 1000

    # Second run: nothing retrained, nothing re-evaluated.
    assert main(sweep_argv(tiny_model_dir, out)) == 0
    assert len(fake_training) == 2 and len(counted_evaluations) == 3

    # A new alpha trains and evaluates only that one.
    argv = sweep_argv(tiny_model_dir, out)
    argv[1] = "0,0.2,0.4"
    assert main(argv) == 0
    assert [c.alpha for c in fake_training] == [0.0, 0.2, 0.4] and len(counted_evaluations) == 4

    # Changed evaluation settings re-evaluate every model, still without retraining.
    argv[argv.index("--max-new-tokens") + 1] = "5"
    assert main(argv) == 0
    assert len(fake_training) == 3 and len(counted_evaluations) == 8


def test_unfinished_run_is_retrained(tiny_model_dir, tmp_path, fake_training, counted_evaluations):
    out = tmp_path / "sweep"
    (out / "alpha-0").mkdir(parents=True)  # a crashed run with no checkpoint and no summary
    argv = sweep_argv(tiny_model_dir, out)
    argv[1] = "0"
    assert main(argv) == 0
    assert [c.alpha for c in fake_training] == [0.0]


@pytest.mark.parametrize("text,expected", [("0,0.05,0.1", (0.0, 0.05, 0.1)), ("0.2", (0.2,)), (" 0 , 1 ", (0.0, 1.0))])
def test_parse_alphas(text, expected):
    assert parse_alphas(text) == expected


@pytest.mark.parametrize("text", ["", "0,0", "-0.1", "1.5", "a,b"])
def test_bad_alphas(text):
    with pytest.raises(ValueError, match="alphas"):
        parse_alphas(text)


@pytest.mark.parametrize("text", ["", "64,64", "0", "1.5", "x"])
def test_bad_token_counts(text):
    with pytest.raises(ValueError, match="token counts"):
        parse_token_counts(text)


def test_train_flags_pass_through_but_not_reserved_ones(tmp_path):
    config = config_from_argv(["--alphas", "0.1", "--out", str(tmp_path), "--", "--steps", "7", "--kl-coef", "0.001"])
    assert config.train_args == {"steps": 7, "kl_coef": 0.001}
    with pytest.raises(ValueError, match="must not set"):
        SweepConfig(alphas=(0.1,), out=str(tmp_path), train_args={"alpha": 0.3})


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["--alphas", "0.1", "--out", str(tmp_path), "--model", str(tmp_path / "absent"), "--data", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'nope'")


# ----------------------------------------------------------------------------- the family sweep: --recipes


def recipes_argv(tiny_model_dir, out, recipes="paper:0.1,gfpo:2", *train_flags):
    return ["--recipes", recipes, "--out", str(out), "--model", str(tiny_model_dir), "--max-problems", "2",
            "--max-new-tokens", "4", "--temperature", "0", "--", "--group-size", "4", *train_flags]


def test_recipes_become_settings_with_one_budget(tmp_path):
    config = config_from_argv(["--recipes", "paper:0.1,paper:0.2,dler", "--alphas", "0.3", "--out", str(tmp_path)])
    assert [(s.label, s.folder, s.train, s.series) for s in config.settings()] == [
        ("alpha=0.3", "alpha-0.3", {"alpha": 0.3}, "alpha"),
        ("paper:0.1", "paper-0.1", {"recipe": "paper", "alpha": 0.1}, "paper"),
        ("paper:0.2", "paper-0.2", {"recipe": "paper", "alpha": 0.2}, "paper"),
        ("dler", "dler", {"recipe": "dler"}, "dler"),
    ]
    assert config.token_budget == sweep.DEFAULT_ROLLOUT_TOKEN_BUDGET
    assert config_from_argv(["--recipes", "dler", "--rollout-token-budget", "5000", "--out", str(tmp_path)]).token_budget == 5000
    assert config_from_argv(["--alphas", "0.1", "--out", str(tmp_path)]).token_budget is None


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown recipe 'nope'"),
    ("laser-d:3", "laser-d has no knob"),
    ("paper:0.1,paper:0.1", "distinct"),
    ("paper:x", "must be a number"),
    ("", "distinct"),
])
def test_bad_recipes(text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_recipe_specs(text)


def test_a_sweep_needs_alphas_or_recipes(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 2
    assert "alphas or recipes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must not set"):
        SweepConfig(out=str(tmp_path), recipes=sweep.parse_recipe_specs("dler"), train_args={"recipe": "gfpo"})


def test_recipe_sweep_hands_recipe_knob_and_budget_to_training(tiny_model_dir, tmp_path, fake_training, counted_evaluations, capsys):
    out = tmp_path / "family"
    assert main(recipes_argv(tiny_model_dir, out)) == 0
    assert [(c.recipe, c.alpha, c.group_size, c.gfpo_keep, c.group_filter, c.rollout_token_budget, c.steps, c.eval_problems)
            for c in fake_training] == [
        ("paper", 0.1, 4, 8, "none", sweep.DEFAULT_ROLLOUT_TOKEN_BUDGET, sweep.BUDGETED_STEP_CAP, 0),
        ("gfpo", 0.2, 4, 2, "gfpo-shortest", sweep.DEFAULT_ROLLOUT_TOKEN_BUDGET, sweep.BUDGETED_STEP_CAP, 0),
    ]
    record = json.loads((out / "sweep.json").read_text())
    assert list(record["reports"]) == ["warm start", "paper:0.1", "gfpo:2"]
    assert record["runs"]["gfpo:2"] == {"steps": sweep.BUDGETED_STEP_CAP, "rollout_tokens": None}
    tables = capsys.readouterr().out
    assert "| paper:0.1 |" in tables and "toy: accuracy % / mean tokens per difficulty level" in tables
    assert (out / "paper-0.1" / "model").is_dir() and (out / "pareto.png").stat().st_size > 1000

    assert main(recipes_argv(tiny_model_dir, out)) == 0  # resumed: nothing retrained or re-evaluated
    assert len(fake_training) == 2 and len(counted_evaluations) == 3


def test_a_tiny_recipe_sweep_trains_each_recipe_to_the_budget(tiny_model_dir, tmp_path):
    """Real training: a 1-token budget ends each run after its first step."""
    out = tmp_path / "family"
    argv = recipes_argv(tiny_model_dir, out, "paper:0.1,gfpo:2", "--prompts-per-step", "2", "--max-new-tokens", "6", "--quiet")
    argv[argv.index("--"):argv.index("--")] = ["--rollout-token-budget", "1"]
    assert main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    for label, folder in (("paper:0.1", "paper-0.1"), ("gfpo:2", "gfpo-2")):
        assert record["runs"][label]["steps"] == 1 and record["runs"][label]["rollout_tokens"] >= 1
        assert json.loads((out / folder / "config.json").read_text())["rollout_token_budget"] == 1
    assert json.loads((out / "gfpo-2" / "config.json").read_text())["group_filter"] == "gfpo-shortest"
