"""``examples/trl_grpo_tiny.py`` runs: one short step of TRL with effreason's loss and reward on the warm start."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_tiny.py"


def test_example_trains_one_step(tmp_path):
    spec = importlib.util.spec_from_file_location("trl_grpo_tiny", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    arguments = ["--steps", "1", "--prompts-per-step", "1", "--num-generations", "2", "--max-completion-length", "48"]
    steps = example.main([*arguments, "--output-dir", str(tmp_path)])
    assert len(steps) == 1
    assert 0.0 <= steps[0]["rewards/paper_reward/mean"] <= 1.0
    assert steps[0]["completions/mean_length"] > 0
