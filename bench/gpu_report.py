"""Summarise ``bench/gpu_check.sh`` results: test outcomes per backend and the GPU benchmark table.

Usage: ``python bench/gpu_report.py RESULTS_DIR`` (reads ``tests.xml``, ``fused_ops_gpu_*.json`` and
``decode_kernels_gpu.json``).
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


def test_outcomes(path: str) -> dict:
    """Counts of passed / failed / skipped test cases per backend (``other`` for backend-free tests)."""
    counts = {backend: Counter() for backend in BACKENDS + ("other",)}
    if not os.path.exists(path):
        return counts
    for case in ElementTree.parse(path).iter("testcase"):
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
    outcomes = test_outcomes(os.path.join(results_dir, "tests.xml"))
    print("tests (passed / failed / skipped):")
    for backend, counts in outcomes.items():
        print(f"  {backend:<8}{counts['passed']:>5}{counts['failed']:>5}{counts['skipped']:>5}")
    print("\n".join(benchmark_tables(results_dir) + decode_kernel_table(results_dir)))
    return 1 if any(counts["failed"] for counts in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/effreason_bench"))
