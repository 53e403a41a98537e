"""Benchmarks of the fused LM-head ops against naive torch, Liger-Kernel and the bare matmuls.

Run: ``pytest bench/test_fused_ops.py -s`` (``EFFREASON_BENCH_QUICK=1`` for a seconds-long smoke run).

Every contestant does forward + backward on the same inputs in the same process:

* ``matmul floor``: the step's three bare matmuls (logits, grad of hidden, grad of weight),
* ``naive torch``: ``effreason.ops.reference.policy_loss`` (materialised float32 logits),
* ``liger``: Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (loss_type "grpo" = seq-mean-token-mean),
* ``fused_policy_loss``: ours, the paper's loss with old log-probs (PPO ratio and clip active),
* ``fused_logprobs``: ours, per-token log-probs with an arbitrary upstream gradient.

The contestants run interleaved, one call each per round (so machine load hits them alike); the
table gives the minimum time, its ratio to the floor's minimum, and the median over rounds of the
per-round ratio to the floor (the robust one on a shared machine). Peak extra memory is what one step allocates at most
beyond its inputs, parameter gradients included (``peak_extra_memory``).
The CPU section uses float32, N = 2048 tokens in 16 sequences (groups of 8), H = 256, V = 32000;
the GPU section (skipped without CUDA) bf16, N = 16384, H = 1536 and 4096, V = 151936, and
reports TFLOP/s over the three matmuls' FLOPs against the card's measured rate on those bare
matmuls, plus peak extra CUDA memory (over inputs; outputs and float32 dW included). With
``TRITON_INTERPRET=1 EFFREASON_BENCH_QUICK=1`` and no GPU the GPU section dry-runs tiny shapes on
the CPU. Results are also written as JSON to ``$EFFREASON_BENCH_RESULTS`` (default /tmp/effreason_bench).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import pytest
import torch

from effreason.ops import fused_logprobs, fused_policy_loss, reference
from effreason.ops.segment import length_penalized_rloo_torch

QUICK = os.environ.get("EFFREASON_BENCH_QUICK", "0") == "1"
RESULTS_DIR = os.environ.get("EFFREASON_BENCH_RESULTS", os.path.join(os.environ.get("TMPDIR", "/tmp"), "effreason_bench"))


@dataclass(frozen=True)
class Shape:
    num_tokens: int
    num_sequences: int
    group_size: int
    hidden_size: int
    vocab_size: int
    dtype: str
    device: str


CPU_SHAPE = Shape(256, 4, 2, 64, 4000, "float32", "cpu") if QUICK else Shape(2048, 16, 8, 256, 32000, "float32", "cpu")
CONTESTANTS = ("matmul floor", "naive torch", "liger", "fused_policy_loss", "fused_logprobs")


def make_inputs(shape: Shape, seed: int = 0) -> dict:
    """Hidden states, LM head, targets, packed boundaries, correctness and old log-probs for ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    dtype, device = getattr(torch, shape.dtype), torch.device(shape.device)
    tokens_per_sequence = shape.num_tokens // shape.num_sequences
    hidden = torch.randn(shape.num_tokens, shape.hidden_size, generator=generator)
    weight = torch.randn(shape.vocab_size, shape.hidden_size, generator=generator) / shape.hidden_size**0.5
    return {
        "hidden": hidden.to(device, dtype).requires_grad_(),
        "weight": weight.to(device, dtype).requires_grad_(),
        "targets": torch.randint(0, shape.vocab_size, (shape.num_tokens,), generator=generator).to(device),
        "cu_seqlens": torch.arange(0, shape.num_tokens + 1, tokens_per_sequence).to(device),
        "correct": (torch.rand(shape.num_sequences, generator=generator) > 0.5).to(device),
        "old_logprobs": (-8.0 + 0.05 * torch.randn(shape.num_tokens, generator=generator)).to(device),
        "upstream": torch.randn(shape.num_tokens, generator=generator).to(device),
    }


def _liger_loss(shape: Shape):
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except ImportError:
        return None
    return LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, loss_type="grpo")


def make_step(name: str, shape: Shape, inputs: dict, backend: str = "auto"):
    """A callable doing forward + backward for contestant ``name`` (None when unavailable)."""
    hidden, weight, targets = inputs["hidden"], inputs["weight"], inputs["targets"]
    paper = dict(group_size=shape.group_size, alpha=0.2, old_logprobs=inputs["old_logprobs"])

    if name == "matmul floor":
        grad_logits = torch.randn(shape.num_tokens, shape.vocab_size, dtype=hidden.dtype, device=hidden.device)

        def step():
            with torch.no_grad():
                hidden @ weight.T, grad_logits @ weight, grad_logits.T @ hidden

        return step
    if name == "naive torch":
        return lambda: reference.policy_loss(hidden, weight, targets, inputs["cu_seqlens"], inputs["correct"], **paper)[0].backward()
    if name == "fused_policy_loss":
        return lambda: fused_policy_loss(
            hidden, weight, targets, inputs["cu_seqlens"], inputs["correct"], backend=backend, **paper
        )[0].backward()
    if name == "fused_logprobs":
        return lambda: (fused_logprobs(hidden, weight, targets, backend=backend) * inputs["upstream"]).sum().backward()
    if name == "liger":
        return _liger_step(shape, inputs)
    raise ValueError(f"unknown contestant {name!r}")


def _liger_step(shape: Shape, inputs: dict):
    loss_module = _liger_loss(shape)
    if loss_module is None:
        return None
    tokens_per_sequence = shape.num_tokens // shape.num_sequences
    hidden, weight = inputs["hidden"], inputs["weight"]
    lengths = torch.full((shape.num_sequences,), tokens_per_sequence, device=hidden.device)
    _, advantages = length_penalized_rloo_torch(inputs["correct"], lengths, shape.group_size, 0.2)
    padded = (shape.num_sequences, tokens_per_sequence)
    mask = torch.ones(padded, dtype=torch.long, device=hidden.device)
    old = inputs["old_logprobs"].view(padded)

    def step():
        batch_hidden = hidden.view(*padded, shape.hidden_size)
        loss = loss_module(batch_hidden, weight, inputs["targets"].view(padded), mask, advantages, old_per_token_logps=old)
        (loss[0] if isinstance(loss, tuple) else loss).backward()

    return step


def _clear_grads(inputs: dict) -> None:
    inputs["hidden"].grad = None
    inputs["weight"].grad = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_times(steps: dict, inputs: dict, rounds: int, device: str) -> dict:
    """Seconds per contestant (one list entry per round) over ``rounds`` rounds that run every contestant once, in turn."""
    times = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
        _clear_grads(inputs)
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            _clear_grads(inputs)
    return times


def median_ratio(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of ``time / baseline time`` in the same round (robust to load drifting between rounds)."""
    ratios = sorted(time_ / base for time_, base in zip(times, baseline))
    return ratios[len(ratios) // 2]


def peak_extra_memory(step, device: str) -> float:
    """Peak bytes one call of ``step`` allocates beyond what existed before it (its outputs and grads included).

    CUDA: ``torch.cuda.max_memory_allocated``; CPU: the running sum of the torch profiler's
    allocation events (``profile_memory=True``), whose maximum is the peak.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        step()
    events = sorted((event for event in profile.profiler.kineto_results.events() if event.name() == "[memory]"), key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return float(peak)


def _write_results(filename: str, payload: dict) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, filename), "w") as handle:
        json.dump(payload, handle, indent=2)


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = [" | ".join(f"{column:>18}" for column in columns)]
    for row in rows:
        lines.append(" | ".join(f"{row[c]:>18.3f}" if isinstance(row[c], float) else f"{row[c]:>18}" for c in columns))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CPU


@pytest.fixture(scope="module")
def cpu_inputs():
    torch.manual_seed(0)
    return make_inputs(CPU_SHAPE)


def test_cpu_ratios(cpu_inputs, capsys):
    """Interleaved times, ratios to the matmul floor and peak extra memory; printed and saved."""
    steps = {name: make_step(name, CPU_SHAPE, cpu_inputs, "torch") for name in CONTESTANTS}
    steps = {name: step for name, step in steps.items() if step is not None}
    times = interleaved_times(steps, cpu_inputs, rounds=2 if QUICK else 5, device="cpu")
    floor = times["matmul floor"]
    rows = []
    for name, step in steps.items():
        memory = peak_extra_memory(step, "cpu")
        _clear_grads(cpu_inputs)
        rows.append({
            "contestant": name, "min s": min(times[name]), "x floor (min)": min(times[name]) / min(floor),
            "x floor (median)": median_ratio(times[name], floor), "peak extra MiB": memory / 2**20,
        })
    _write_results("fused_ops_cpu.json", {"shape": asdict(CPU_SHAPE), "threads": torch.get_num_threads(), "rows": rows})
    with capsys.disabled():
        print(f"\nCPU fp32 {asdict(CPU_SHAPE)}, {torch.get_num_threads()} threads, interleaved rounds")
        print(_table(rows, ["contestant", "min s", "x floor (min)", "x floor (median)", "peak extra MiB"]))
    assert all(row["min s"] > 0 for row in rows)


# ----------------------------------------------------------------------------- GPU


def _gpu_device() -> str | None:
    """CUDA when present; the CPU for the tiny dry run under TRITON_INTERPRET=1 with EFFREASON_BENCH_QUICK=1."""
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if QUICK and os.environ.get("TRITON_INTERPRET") == "1" else None


def _gpu_shapes() -> list[Shape]:
    device = _gpu_device() or "cuda"
    if device == "cpu":
        return [Shape(64, 4, 2, 32, 1000, "bfloat16", "cpu")]
    if QUICK:
        return [Shape(1024, 8, 4, 256, 32000, "bfloat16", device)]
    return [Shape(16384, 64, 8, hidden, 151936, "bfloat16", device) for hidden in (1536, 4096)]


def _kernel_backends(device: str) -> list[str]:
    from effreason._backends import triton_usable_on
    from effreason.ops.fused import cuda_kernels_available

    found = ["triton"] if triton_usable_on(torch.device(device)) else []
    return found + (["cuda"] if device == "cuda" and cuda_kernels_available() else [])


@pytest.mark.skipif(_gpu_device() is None, reason="needs a CUDA device (or TRITON_INTERPRET=1 with EFFREASON_BENCH_QUICK=1)")
@pytest.mark.parametrize("shape", _gpu_shapes(), ids=lambda shape: f"H{shape.hidden_size}")
def test_gpu_throughput(shape, capsys):
    """TFLOP/s over the three matmuls' FLOPs; the matmul floor's own rate is the card's measured matmul throughput."""
    inputs = make_inputs(shape)
    floor_flops = 3 * 2 * shape.num_tokens * shape.hidden_size * shape.vocab_size
    steps = {"matmul floor": make_step("matmul floor", shape, inputs)}
    for backend in _kernel_backends(shape.device):
        steps[f"fused_policy_loss[{backend}]"] = make_step("fused_policy_loss", shape, inputs, backend)
        steps[f"fused_logprobs[{backend}]"] = make_step("fused_logprobs", shape, inputs, backend)
    for name in ("naive torch", "liger") if shape.device == "cuda" else ():
        step = make_step(name, shape, inputs)
        if step is not None:  # liger when installed
            steps[name] = step
    times = {name: min(seconds) for name, seconds in interleaved_times(steps, inputs, rounds=2, device=shape.device).items()}
    matmul_tflops = floor_flops / times["matmul floor"] / 1e12
    rows = []
    for name, step in steps.items():
        achieved = floor_flops / times[name] / 1e12
        scratch = peak_extra_memory(step, shape.device)
        _clear_grads(inputs)
        rows.append({"contestant": name, "seconds": times[name], "TFLOP/s": achieved, "of matmul": achieved / matmul_tflops, "peak extra GiB": scratch / 2**30})
    card = torch.cuda.get_device_name() if shape.device == "cuda" else "cpu (triton interpreter dry run)"
    _write_results(f"fused_ops_gpu_H{shape.hidden_size}.json", {"card": card, "shape": asdict(shape), "matmul_tflops": matmul_tflops, "rows": rows})
    with capsys.disabled():
        print(f"\n{card}: bf16 {asdict(shape)}, three bare matmuls at {matmul_tflops:.1f} TFLOP/s")
        print(_table(rows, ["contestant", "seconds", "TFLOP/s", "of matmul", "peak extra GiB"]))
