"""The run folder's lifetime: a run that fails before its first step leaves no folder behind.

A folder holding only ``config.json`` (or an evaluation of the starting model) looks like a real
run, and nothing in it can be resumed. ``cleanup_if_no_step`` removes the folder when this run
created it and no training step was recorded when it failed; a folder that existed before the run
(``--out`` an existing folder, ``--resume``) is never touched.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

METRICS = "metrics.jsonl"


def default_run_dir() -> Path:
    """``runs/train-YYYYmmdd-HHMMSS`` under the working directory."""
    return Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")


def has_a_step(run_dir: Path) -> bool:
    """Whether the run folder records at least one finished training step (a line of ``metrics.jsonl``)."""
    path = Path(run_dir) / METRICS
    return path.is_file() and any(line.strip() for line in path.read_text().splitlines())


@contextlib.contextmanager
def cleanup_if_no_step(run_dir: Path, *, owner: bool = True):
    """Run the body; if it raises (Ctrl-C included) before any step was recorded, remove ``run_dir``
    when it did not exist on entry. ``owner`` False (the non-main ranks) never removes anything."""
    run_dir = Path(run_dir)
    created_here = owner and not run_dir.exists()
    try:
        yield run_dir
    except BaseException:
        if created_here and run_dir.is_dir() and not has_a_step(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
