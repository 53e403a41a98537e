"""Atomic checkpoints of a run: write to a temporary folder, then rename into place.

``RUN_DIR/checkpoint/`` holds the model in Hugging Face format (``save_pretrained``), the
tokenizer, ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (python, numpy, torch CPU and CUDA
generators) and ``state.json`` (step, data position, alpha, counters). A crash at any moment
leaves either the previous checkpoint or the new one complete: the new folder is fully written
as ``checkpoint.tmp``, the old one is moved to ``checkpoint.old``, the new one renamed into
place, and only then is the old one deleted (``load`` falls back to ``checkpoint.old``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint"


def rng_states() -> dict:
    """Every random generator the run uses."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run_dir: Path, *, model_state: dict, model, tokenizer, optimizer_state: dict, scheduler, state: dict) -> Path:
    """Write ``run_dir/checkpoint`` atomically; ``model_state`` is the full (gathered) state dict."""
    run_dir = Path(run_dir)
    final, temporary, previous = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    model.save_pretrained(temporary, state_dict=model_state, safe_serialization=True)
    tokenizer.save_pretrained(temporary)
    torch.save(optimizer_state, temporary / "optimizer.pt")
    torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
    torch.save(rng_states(), temporary / "rng.pt")
    (temporary / "state.json").write_text(json.dumps(state, indent=2))
    _sync_folder(temporary)
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(temporary, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def export_model(folder: Path, model, tokenizer, model_state: dict, dtype: torch.dtype) -> Path:
    """Save the trained model in Hugging Face format in ``dtype`` (the compute dtype, as the original
    checkpoint is usually stored), so HF, vLLM and SGLang load it as they load the original; the
    checkpoint keeps the float32 master weights for an exact resume."""
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in model_state.items()}
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "config.json"
    saved = json.loads(config_file.read_text())
    saved["dtype"] = str(dtype).removeprefix("torch.")  # save_pretrained records the float32 parameters' dtype
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return Path(folder)


def _sync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint of ``run_dir`` (``checkpoint``, else ``checkpoint.old``), or None."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        candidate = Path(run_dir) / name
        if (candidate / "state.json").exists():
            return candidate
    return None


def load_training_state(folder: Path) -> dict:
    """``state``, ``optimizer``, ``scheduler`` and ``rng`` of a checkpoint (the model loads with from_pretrained)."""
    folder = Path(folder)
    return {
        "state": json.loads((folder / "state.json").read_text()),
        "optimizer": torch.load(folder / "optimizer.pt", weights_only=False),
        "scheduler": torch.load(folder / "scheduler.pt", weights_only=False),
        "rng": torch.load(folder / "rng.pt", weights_only=False),
    }
