"""End-to-end runs on a tiny random-weight Qwen2 saved to disk: the real path (--model DIR --data FILE),
NaN handling, kill-and-resume, and two processes under torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effreason.train import TrainingAborted, config_from_args, run
from effreason.train.__main__ import main
from effreason.train.loop import Trainer
from effreason.train.methods.rl import PolicyLoss

from train_helpers import crash_at_step, tiny_run_flags

REPO = Path(__file__).resolve().parents[2]


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "model.safetensors")


def _assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_few_step_run_writes_the_run_folder(tiny_model_dir, toy_data_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=3, mini_batches=2, alpha=0.4)) == 0
    for name in ("config.json", "metrics.jsonl", "summary.json", "eval_before.json", "eval_after.json",
                 "training_curves.png", "accuracy_vs_tokens.png", "model/model.safetensors", "model/tokenizer.json",
                 "checkpoint/state.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for which in ("before", "after"):
        assert set(summary[which]) >= {"accuracy", "mean_tokens", "by_difficulty"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["alpha"] == 0.4 and m["rollout_s"] > 0 and m["update_s"] > 0 for m in metrics)
    assert json.loads((out / "config.json").read_text())["mini_batches"] == 2
    assert "acc before" in capsys.readouterr().out


def _fail_in(monkeypatch, method_name: str):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, method_name, fail)


@pytest.mark.parametrize("where", ["_build", "_evaluation", "_one_step"])
def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tiny_model_dir, toy_data_file, tmp_path, monkeypatch, where):
    _fail_in(monkeypatch, where)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out)))
    assert not out.exists()


def test_a_bad_start_from_the_cli_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--model", str(tmp_path / "nowhere"), "--out", str(out), "--steps", "1"]) == 1
    assert "model folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_out_folder_is_never_removed(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    _fail_in(monkeypatch, "_build")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="boom"):
        run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out)))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failure_after_a_step_keeps_the_folder(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 2, "boom")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=3, eval_problems=0)))
    assert (out / "checkpoint" / "state.json").exists() and (out / "metrics.jsonl").read_text().strip()


def _nan_on_calls(monkeypatch, bad_calls):
    original = PolicyLoss.forward
    calls = {"count": 0}

    def forward(self, batch, alpha, ref_logprobs=None):
        calls["count"] += 1
        loss, stats = original(self, batch, alpha, ref_logprobs)
        return (loss * float("nan"), stats) if bad_calls(calls["count"]) else (loss, stats)

    monkeypatch.setattr(PolicyLoss, "forward", forward)


def test_a_nan_step_is_skipped_and_counted(tiny_model_dir, toy_data_file, tmp_path, monkeypatch, capsys):
    _nan_on_calls(monkeypatch, lambda call: call == 2)
    out = tmp_path / "run"
    run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=3, eval_problems=0)))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [0, 1, 0]
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1
    assert "non-finite loss" in capsys.readouterr().err


def test_repeated_nan_aborts_with_a_usable_checkpoint(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, lambda call: call > 1)
    out = tmp_path / "run"
    config = config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=10, eval_problems=0, max_bad_steps=2, checkpoint_every=5))
    with pytest.raises(TrainingAborted, match="2 consecutive updates had a non-finite loss"):
        run(config)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["skipped_steps"] == 2
    checkpoint = load_file(out / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in checkpoint.values())


def _wait_for_checkpoint_then_kill(process, run_dir: Path, min_step: int, timeout_s: float = 240) -> int:
    state_file = run_dir / "checkpoint" / "state.json"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed (rc {process.returncode}): {process.stderr.read()}")
        try:
            step = json.loads(state_file.read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            step = 0
        if step >= min_step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return step
        time.sleep(0.01)
    process.kill()
    pytest.fail("no checkpoint appeared in time")


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, toy_data_file, tmp_path):
    settings = dict(steps=10, checkpoint_every=2, eval_problems=2)
    reference = tmp_path / "uninterrupted"
    run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, reference, **settings)))

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "effreason.train", *tiny_run_flags(tiny_model_dir, toy_data_file, killed, **settings)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_at = _wait_for_checkpoint_then_kill(process, killed, min_step=2)
    assert killed_at < 10 and not (killed / "summary.json").exists()

    assert main(["--resume", str(killed), "--quiet"]) == 0
    _assert_same_weights(_weights(reference), _weights(killed))
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_weights(tiny_model_dir, toy_data_file, tmp_path):
    out = tmp_path / "ddp"
    flags = tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=2, eval_problems=4)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "effreason.train", *flags]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["before"]["num_problems"] == 4


def test_trains_on_a_gsm8k_spec(tiny_model_dir, tmp_path):
    fixture = REPO / "effreason" / "data" / "fixtures" / "gsm8k.jsonl"
    out = tmp_path / "run"
    assert main(tiny_run_flags(tiny_model_dir, f"gsm8k:{fixture}", out, steps=1, eval_problems=1)) == 0
    assert json.loads((out / "summary.json").read_text())["before"]["num_problems"] == 1


def _torchrun(flags: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "effreason.train", *flags]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_resume_restores_the_sharded_optimizer_state(tiny_model_dir, toy_data_file, tmp_path):
    """FSDP2 on the CPU (gloo): a run stopped after 2 steps and resumed to 3 ends with the weights of an
    uninterrupted 3-step run, so the full optimizer state went back onto the shards. Kimi's reward
    scores wrong answers by length, so the random tiny model still gets a gradient. pi_old comes from the
    trainer's no-grad forward through the FSDP2 module (two mini-batches), as with bf16 on GPUs."""
    settings = dict(eval_problems=0, reward="kimi", advantage="grpo", data_parallel="fsdp2", checkpoint_every=1,
                    old_logprobs="trainer", mini_batches=2)
    _torchrun(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "whole", steps=3, **settings))
    _torchrun(tiny_run_flags(tiny_model_dir, toy_data_file, tmp_path / "resumed", steps=2, **settings))
    _torchrun(["--resume", str(tmp_path / "resumed"), "--steps", "3", "--quiet"])
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(whole[name], start[name]) for name in start)
    _assert_same_weights(whole, resumed)
