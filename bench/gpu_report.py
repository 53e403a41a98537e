"""Summarise ``bench/gpu_check.sh`` results: test outcomes per backend, the GPU benchmark tables, the whole RL step,
the 7B micro-batch memory and the end-to-end training run.

Usage: ``python bench/gpu_report.py RESULTS_DIR`` (reads ``tests*.xml``, ``fused_ops_gpu_*.json``,
``decode_kernels_gpu.json``, ``rl_step_gpu.json``, ``memory_7b_gpu.json`` and ``train_summary.json``, those present).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter

BACKENDS = ("torch", "triton", "cuda")


def test_outcomes(paths: list[str]) -> dict:
    """Counts of passed / failed / skipped test cases per backend (``other`` for backend-free tests) over the
    JUnit files ``paths``."""
    counts = {backend: Counter() for backend in BACKENDS + ("other",)}
    cases = [case for path in paths for case in ElementTree.parse(path).iter("testcase")]
    for case in cases:
        match = re.search(r"\b(torch|triton|cuda)\b", case.get("name", "").replace("-", " ").replace("[", " ").replace("]", " "))
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = "failed" if tag in ("failure", "error") else "skipped"
        counts[match.group(1) if match else "other"][outcome] += 1
    return counts


def benchmark_tables(results_dir: str) -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(results_dir, "fused_ops_gpu_*.json"))):
        with open(path) as handle:
            result = json.load(handle)
        shape = result["shape"]
        lines.append(f"{result['card']}: N={shape['num_tokens']} H={shape['hidden_size']} V={shape['vocab_size']} {shape['dtype']}, "
                     f"bare matmuls {result['matmul_tflops']:.1f} TFLOP/s")
        lines.append(f"  {'contestant':<28}{'ms':>10}{'TFLOP/s':>10}{'of matmul':>11}{'peak GiB':>10}")
        for row in result["rows"]:
            lines.append(f"  {row['contestant']:<28}{row['seconds'] * 1e3:>10.1f}{row['TFLOP/s']:>10.1f}"
                         f"{row['of matmul']:>11.2f}{row['peak extra GiB']:>10.2f}")
    return lines or ["no GPU benchmark results"]


def _read_json(results_dir: str, name: str) -> dict | None:
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def print_step_results(results_dir: str) -> bool:
    """Print the whole-step table (``test_rl_step.print_step``), the 7B memory check and the training run, those
    present; True when the training run finished (its ``train_summary.json`` exists)."""
    step = _read_json(results_dir, "rl_step_gpu.json")
    if step is not None:
        from test_rl_step import print_step  # bench/, this script's folder

        print_step(step)
    else:
        print("no whole-step benchmark result")
    memory = _read_json(results_dir, "memory_7b_gpu.json")
    if memory is not None:
        print(f"7B micro-batch of {memory['num_tokens']} tokens on {memory['card']}: peak {memory['peak_bytes'] / 2**30:.1f} "
              f"GiB of {memory['device_bytes'] / 2**30:.1f} GiB (weights {memory['weights_bytes'] / 2**30:.1f} GiB)")
    train = _read_json(results_dir, "train_summary.json")
    if train is None:
        print("python -m effreason.train end to end: no summary (train.log says why)")
        return False
    print(f"python -m effreason.train, resumed after step 1: {train['steps']} steps, {train['skipped_steps']} skipped, "
          f"rollout {train['rollout_s']:.1f} s, update {train['update_s']:.1f} s (resumed run {train['time_s']:.0f} s)")
    return True


def decode_kernel_table(results_dir: str) -> list[str]:
    """The sampler's kernels vs their torch references (``test_decode_kernels.py``): ms, speedup, peak MiB."""
    path = os.path.join(results_dir, "decode_kernels_gpu.json")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        result = json.load(handle)
    lines = [f"{result['card']}: decode kernels ({result['dtype']}) vs torch",
             f"  {'op':<34}{'ms':>8}{'torch ms':>10}{'speedup':>9}{'MiB':>8}{'torch MiB':>10}"]
    for row in result["rows"]:
        lines.append(f"  {row['op']:<34}{row['ms']:>8.3f}{row['reference ms']:>10.3f}{row['speedup']:>8.2f}x"
                     f"{row['peak MiB']:>8.1f}{row['reference peak MiB']:>10.1f}")
    return lines


def main(results_dir: str) -> int:
    outcomes = test_outcomes(sorted(glob.glob(os.path.join(results_dir, "tests*.xml"))))
    print("tests (passed / failed / skipped):")
    for backend, counts in outcomes.items():
        print(f"  {backend:<8}{counts['passed']:>5}{counts['failed']:>5}{counts['skipped']:>5}")
    print("\n".join(benchmark_tables(results_dir) + decode_kernel_table(results_dir)))
    trained = print_step_results(results_dir)
    return 1 if any(counts["failed"] for counts in outcomes.values()) or not trained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/effreason_bench"))
