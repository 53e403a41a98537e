"""``python -m effreason.eval`` end to end on a tiny random model, and its one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from effreason.models import resolve_model_dir
from effreason.eval.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "effreason" / "data" / "fixtures"


def run_cli(*args) -> int:
    return main([str(arg) for arg in args])


def test_eval_end_to_end(tiny_model_dir, tmp_path, capsys):
    report_path, plot_path = tmp_path / "eval.json", tmp_path / "eval.png"
    code = run_cli("--model", tiny_model_dir, "--data", "toy", "--data", f"math500:{FIXTURES / 'math500.parquet'}",
                   "--max-problems", 3, "--n", 2, "--max-new-tokens", 6, "--seed", 1,
                   "--json", report_path, "--plot", plot_path)
    assert code == 0
    table = capsys.readouterr().out
    settings, header = table.splitlines()[:2]
    assert settings == f"{tiny_model_dir}: 2 sample(s) per problem, temperature 0.6, at most 6 new tokens, seed 1, at most 3 problems per dataset"
    assert header.startswith("dataset") and "math500" in table and "level" in table
    report = json.loads(report_path.read_text())
    toy = report["datasets"]["toy"]
    assert toy["num_problems"] == 3 and toy["num_samples"] == 6
    assert 0 < toy["mean_tokens"] <= 6 and 0.0 <= toy["accuracy"] <= 1.0
    assert report["settings"]["n"] == 2 and report["baseline"] is None
    assert plot_path.stat().st_size > 1000

    code = run_cli("--model", tiny_model_dir, "--data", "toy", "--max-problems", 3, "--n", 2, "--max-new-tokens", 6,
                   "--seed", 1, "--force-answer", "--baseline", report_path, "--json", tmp_path / "forced.json")
    assert code == 0
    forced = json.loads((tmp_path / "forced.json").read_text())
    assert forced["normalised"]["toy"]["tokens_pct"] is not None
    truncated = toy["truncation_rate"] > 0
    assert (forced["datasets"]["toy"]["mean_tokens"] > toy["mean_tokens"]) == truncated


def test_prompt_budget_reported(tiny_model_dir, tmp_path, capsys):
    code = run_cli("--model", tiny_model_dir, "--data", "toy", "--max-problems", 2, "--max-new-tokens", 4,
                   "--temperature", 0, "--prompt-budget", 3, "--json", tmp_path / "budget.json")
    assert code == 0
    assert "prompted budget 3 tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "budget.json").read_text())["datasets"]["toy"]["budget"]["budget"] == 3


def test_run_folder_resolves_to_its_checkpoint(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "run" / "checkpoint")
    assert resolve_model_dir(tmp_path / "run") == tmp_path / "run" / "checkpoint"
    assert resolve_model_dir(tiny_model_dir) == tiny_model_dir


def without_tokenizer(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    shutil.copy(tiny_model_dir / "model.safetensors", folder)
    return folder


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda model, tmp: ["--model", model, "--data", "squad"], "unknown dataset 'squad'"),
        (lambda model, tmp: ["--model", model, "--data", f"gsm8k:{tmp / 'absent.jsonl'}"], "data file not found"),
        (lambda model, tmp: ["--model", tmp / "absent", "--data", "toy"], "model folder not found"),
        (lambda model, tmp: ["--model", tmp, "--data", "toy"], "holds no Hugging Face checkpoint"),
        (lambda model, tmp: ["--model", without_tokenizer(model, tmp), "--data", "toy"], "has no tokenizer"),
        (lambda model, tmp: ["--model", model, "--data", f"jsonl:{FIXTURES / 'custom.jsonl'}"], "custom.jsonl line 1: missing field 'answer' or 'solution' or 'final_answer'"),
        (lambda model, tmp: ["--model", model, "--n", 0], "n must be an int >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys, make_args, message):
    assert run_cli(*make_args(tiny_model_dir, tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error


def test_saved_tokenizer_loads_exactly_as_built(tiny_model_dir):
    """transformers 5's AutoTokenizer would swap in Qwen2Tokenizer and garble the toy vocabulary."""
    from effreason.models import load_tokenizer
    from effreason.tasks.prompting import encode_prompt
    from effreason.tasks.toy import ToyTask
    from effreason.warmstart import build_tokenizer

    question = ToyTask().problems(1, split="test")[0].question
    built, loaded = build_tokenizer(ToyTask()), load_tokenizer(tiny_model_dir)
    assert encode_prompt(question, loaded) == encode_prompt(question, built)
    assert question in loaded.decode(encode_prompt(question, loaded))


def test_an_import_of_the_wrong_module_names_its_file(tiny_model_dir, capsys, monkeypatch):
    import effreason.eval.cli as cli

    def shadowed(config):
        raise ImportError("cannot import name 'CUDAProperties' from 'kernels'", name="kernels", path="/clone/kernels/__init__.py")

    monkeypatch.setattr(cli, "run", shadowed)
    assert run_cli("--model", tiny_model_dir) == 2
    error = capsys.readouterr().err.strip()
    assert "Python took module 'kernels' from /clone/kernels/__init__.py" in error and "\n" not in error
