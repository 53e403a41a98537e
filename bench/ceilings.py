"""Measure the card's two ceilings, the floors every GPU benchmark is compared with.

* bf16 matmul throughput: a large square ``torch.matmul`` (TFLOP/s).
* device memory bandwidth: a large device-to-device copy (read + write bytes per second).

    python bench/ceilings.py [RESULTS_DIR]      # prints both, writes RESULTS_DIR/ceilings.json

The sampler benchmark reads ``EFFREASON_HBM_BYTES_PER_S`` (set by ``bench/gpu_check.sh`` from
this measurement) for its HBM floor. Without CUDA it prints a note and exits 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _time_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event-timed calls, after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def matmul_tflops(size: int = 8192) -> float:
    """bf16 ``(size, size) @ (size, size)``: ``2 * size**3`` FLOPs."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    return 2 * size**3 / (_time_ms(lambda: a @ b) * 1e-3) / 1e12


def copy_bytes_per_s(num_bytes: int = 2 << 30) -> float:
    """Device-to-device copy of ``num_bytes``: ``2 * num_bytes`` moved (read + write)."""
    source = torch.empty(num_bytes, device="cuda", dtype=torch.uint8)
    target = torch.empty_like(source)
    return 2 * num_bytes / (_time_ms(lambda: target.copy_(source)) * 1e-3)


def main(results_dir: str | None = None) -> int:
    if not torch.cuda.is_available():
        print("ceilings: no CUDA device, nothing measured")
        return 0
    result = {
        "device": torch.cuda.get_device_name(),
        "bf16_matmul_tflops": matmul_tflops(),
        "copy_bytes_per_s": copy_bytes_per_s(),
    }
    print(f"ceilings on {result['device']}: bf16 matmul {result['bf16_matmul_tflops']:.0f} TFLOP/s, "
          f"device copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    if results_dir:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        (Path(results_dir) / "ceilings.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
