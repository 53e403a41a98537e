"""One whole RL step as a benchmark: the training loop's own step (rollout, grading, update) on a random model.

    pytest bench/test_rl_step.py -s                                    # GPU: Qwen2.5-1.5B shape, 32 x 8, 1,024-8,192 tokens
    EFFREASON_STEP_LENGTHS=512-2048 pytest bench/test_rl_step.py -s    # other response lengths (bench/gpu_check.sh)
    EFFREASON_BENCH_QUICK=1 pytest bench/test_rl_step.py -s            # seconds-long smoke run (CI)

A random-weight Qwen2 (``bench/random_models.py``: the Qwen2.5-1.5B shape on a GPU, the tiny one on the CPU) is
written to a temporary folder and trained by ``effreason.train``'s ``Trainer`` with the ``paper-1.5b`` preset
(32 prompts x 8 samples of the toy task, two optimizer steps per rollout, micro-batches of 32,768 tokens, KL 0.001
to a frozen reference copy; bf16 compute on CUDA, float32 on the CPU). ``Trainer._one_step`` runs unchanged except
for its sampling params: each prompt's responses are forced to a length drawn uniformly from [lo, hi], EOS
ignored (``max_tokens`` per prompt, no stop tokens; the k samples of a prompt share the length). One short step
warms up (caches, kernels, optimizer state), then one step is measured.

Reported per phase: seconds, tokens, tokens/s (rollout: response tokens; update and step: prompt + response
tokens, verl's throughput count), the update's MFU, peak memory, and the rollout's share of the step.
MFU = model FLOPs / update seconds / the matmul rate measured in this process (a bf16 GEMM on CUDA,
``bench/ceilings.py``; a float32 GEMM on the CPU). Model FLOPs (``update_flops``) count the policy's forward and
backward (6 * params * tokens plus causal attention), the reference model's forward and, when pi_old comes from
the trainer (bf16 compute, ``--old-logprobs``), the policy's no-grad forward for it; not checkpointing's recompute.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak resident memory on the CPU
(``VmHWM``, reset per phase). Published per-GPU figures of other RL trainers are printed as reference rows.

``test_gpu_7b_micro_batch_memory`` (CUDA only): the Qwen2.5-7B shape, float32 master weights, one packed micro-batch
of a single 16,384-token sequence, forward (bf16 autocast) and backward with activation checkpointing; peak memory.
Results are also written as JSON to ``$EFFREASON_BENCH_RESULTS`` (``rl_step_{cpu,gpu}.json``, ``memory_7b_gpu.json``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch
from random_models import random_qwen2, write_random_model
from test_fused_ops import _table, _write_results

from effreason.train import distributed
from effreason.train.config import resolve_config
from effreason.train.loop import Trainer, prepare_for_training
from effreason.train.methods.rl import PolicyLoss
from effreason.train.packing import build_micro_batch
from effreason.train.step import autocast_to

QUICK = os.environ.get("EFFREASON_BENCH_QUICK", "0") == "1"
WARMUP_TOKENS = 16
ANCHORS = [  # (row, what it is, tokens/s per GPU, MFU): published figures (issue #17), not measured here
    ("ref: verl 7B", "verl, Qwen2.5-7B GRPO with remove-padding, 8xH100, 8k responses", "~700", "~0.20"),
    ("ref: prime-rl 0.6B", "prime-rl's trainer, Qwen3-0.6B RL at 16k, 1xH100", "11,900", "0.11"),
    ("ref: NeMo-RL 8B", "NeMo-RL, Llama-3.1-8B GRPO, H100, on-policy", "~1,600", "-"),
]


@dataclasses.dataclass(frozen=True)
class StepShape:
    model: str
    prompts: int
    samples: int
    lengths: tuple[int, int]  # forced response lengths, uniform in [lo, hi]
    micro_batch_tokens: int = 32768


def _lengths_from_env(default: tuple[int, int]) -> tuple[int, int]:
    """``EFFREASON_STEP_LENGTHS=lo-hi`` when set, else ``default``."""
    spec = os.environ.get("EFFREASON_STEP_LENGTHS")
    if not spec:
        return default
    low, high = (int(part) for part in spec.split("-"))
    if not 1 <= low <= high:
        raise ValueError(f"EFFREASON_STEP_LENGTHS must be lo-hi with 1 <= lo <= hi, got {spec!r}")
    return low, high


CPU_SHAPE = StepShape("tiny", 2, 2, (16, 48), 512) if QUICK else StepShape("tiny", 8, 4, (64, 256), 2048)
GPU_SHAPE = StepShape("qwen2.5-1.5b", 8, 4, _lengths_from_env((256, 1024))) if QUICK else \
    StepShape("qwen2.5-1.5b", 32, 8, _lengths_from_env((1024, 8192)))


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak resident set (``/proc/self/clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> float | None:
    """Bytes at the peak since ``reset_peak_memory``: CUDA memory allocated, or the process's ``VmHWM`` (None if unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if line is None else float(line.split()[1]) * 1024


class Phases:
    """Seconds and peak memory of each call of the wrapped functions, by phase name (the last call counts)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, float | None] = {}
        self.arguments: dict[str, tuple] = {}

    def wrap(self, name: str, function):
        def measured(*args, **kwargs):
            _sync(self.device)
            reset_peak_memory(self.device)
            started = time.perf_counter()
            result = function(*args, **kwargs)
            _sync(self.device)
            self.seconds[name] = time.perf_counter() - started
            self.peak_bytes[name] = peak_memory_bytes(self.device)
            self.arguments[name] = args
            return result

        return measured


def forced_lengths(generate, lengths: list[int]):
    """``generate(prompts, params)`` with each prompt's responses forced to ``lengths[i]`` tokens, EOS ignored (no stop
    tokens: the sampler's plain path; ``min_tokens`` would force them too, but masks the stop tokens at every step,
    work a real rollout does not do)."""

    def generate_forced(prompts, params, **options):
        own = [dataclasses.replace(params, max_tokens=length, stop_token_ids=()) for length in lengths[:len(prompts)]]
        return generate(prompts, own, **options)

    return generate_forced


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, description) of a large GEMM in this process: bf16 on CUDA (``bench/ceilings.py``), float32 on the CPU."""
    if device.type == "cuda":
        from ceilings import matmul_tflops

        return matmul_tflops() * 1e12, f"bf16 GEMM on {torch.cuda.get_device_name(device)}"
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * size**3 / best, f"float32 GEMM on the CPU, {torch.get_num_threads()} thread(s)"


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def update_flops(model, rollout, extra_forwards: int) -> float:
    """Model FLOPs of the update over ``rollout``; recomputation (activation checkpointing) is not counted.

    Per sequence with T = prompt + response - 1 input tokens and R response tokens (the LM head runs on those only),
    one forward is ``2 * (N_body * T + N_head * R) + 2 * layers * d_q * T^2`` (N: the weights of the decoder's linear
    layers and of the LM head; causal attention: QK^T and PV over T^2 / 2 pairs each, d_q = heads * head_dim).
    Training is 3 forwards (forward + backward, the 6 * params * tokens rule); ``extra_forwards`` adds the frozen
    reference's and pi_old's forwards.
    """
    config = model.config
    linear = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    body = sum(m.weight.numel() for m in linear)
    head = model.lm_head.weight.numel()
    query_width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    forward = 0.0
    for prompt, response in zip(rollout.prompts, rollout.responses):
        inputs = len(prompt) + len(response) - 1
        forward += 2 * (body * inputs + head * len(response)) + 2 * config.num_hidden_layers * query_width * inputs**2
    return (3 + extra_forwards) * forward


# ----------------------------------------------------------------------------- the step


def build_trainer(model_dir: Path, run_dir: Path, shape: StepShape) -> Trainer:
    """The loop's ``Trainer`` for ``model_dir`` with the paper-1.5b preset and ``shape``'s prompts and samples, built."""
    config = resolve_config(dict(preset="paper-1.5b", model=str(model_dir), out=str(run_dir), prompts_per_step=shape.prompts,
                                 group_size=shape.samples, micro_batch_tokens=shape.micro_batch_tokens, eval_problems=0,
                                 steps=2, quiet=True))
    context = distributed.setup(torch.device("cuda" if torch.cuda.is_available() else "cpu"), config.data_parallel)
    trainer = Trainer(config, context)
    trainer._build(None)
    return trainer


def measure_step(trainer: Trainer, shape: StepShape) -> dict:
    """A warm-up step of ``WARMUP_TOKENS``-token responses, then one measured step with forced lengths; the results."""
    phases = Phases(trainer.device)
    generate, update = trainer.engine.generate, trainer.method.update
    trainer.method.update = phases.wrap("update", update)
    trainer.engine.generate = phases.wrap("rollout", forced_lengths(generate, [WARMUP_TOKENS] * shape.prompts))
    trainer._one_step()
    low, high = shape.lengths
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(low, high + 1, (shape.prompts,), generator=generator).tolist()
    trainer.engine.generate = phases.wrap("rollout", forced_lengths(generate, lengths))
    metrics = trainer._one_step()
    rollout = phases.arguments["update"][0]
    assert [len(r) for r in rollout.responses] == [length for length in lengths for _ in range(shape.samples)]
    response_tokens = sum(lengths) * shape.samples
    step_tokens = response_tokens + sum(len(p) for p in rollout.prompts)
    rate, rate_source = matmul_rate(trainer.device)
    extra_forwards = int(trainer.method.reference is not None) + int(trainer.method.recomputes_old_logprobs)
    flops = update_flops(trainer.model, rollout, extra_forwards)
    rollout_s, update_s = phases.seconds["rollout"], phases.seconds["update"]
    return {
        "shape": dataclasses.asdict(shape), "forced_lengths": lengths, "device": _device_name(trainer.device),
        "compute_dtype": str(trainer.compute_dtype), "attention": trainer.model.config._attn_implementation,
        "sampler_attention": trainer.engine.sampler.runner.backend, "sampler_stats": trainer.engine.sampler.last_stats,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "rollout_s": rollout_s, "update_s": update_s, "response_tokens": response_tokens, "step_tokens": step_tokens,
        "rollout_tokens_per_s": response_tokens / rollout_s, "update_tokens_per_s": step_tokens / update_s,
        "step_tokens_per_s": step_tokens / (rollout_s + update_s), "rollout_share": rollout_s / (rollout_s + update_s),
        "update_flops": flops, "matmul_flops_per_s": rate, "matmul_source": rate_source,
        "update_mfu": flops / update_s / rate, "peak_bytes": phases.peak_bytes,
        "optimizer_steps": metrics["optimizer_steps"], "loss": metrics["loss"],
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _mib(value: float | None):
    return "n/a" if value is None else value / 2**20


def print_step(result: dict) -> None:
    shape = result["shape"]
    memory = "CUDA memory allocated" if result["device"] != "cpu" else "process resident memory (VmHWM)"
    print(f"\n[rl step] {shape['model']} shape ({result['parameters'] / 1e6:.1f}M parameters) on {result['device']}, "
          f"{result['compute_dtype']} compute, {shape['prompts']} prompts x {shape['samples']} samples, responses forced to "
          f"{shape['lengths'][0]}-{shape['lengths'][1]} tokens; attention {result['attention']}, sampler "
          f"{result['sampler_attention']} ({result['sampler_stats']['preemptions']} preemptions)")
    print(f"  MFU against {result['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s ({result['matmul_source']}); peak memory: {memory}; "
          f"rollout share of the step {result['rollout_share']:.3f}")
    peaks = result["peak_bytes"]
    rows = [
        {"phase": "rollout", "seconds": result["rollout_s"], "tokens": result["response_tokens"],
         "tok/s": result["rollout_tokens_per_s"], "MFU": "-", "peak MiB": _mib(peaks["rollout"])},
        {"phase": "update", "seconds": result["update_s"], "tokens": result["step_tokens"],
         "tok/s": result["update_tokens_per_s"], "MFU": result["update_mfu"], "peak MiB": _mib(peaks["update"])},
        {"phase": "step", "seconds": result["rollout_s"] + result["update_s"], "tokens": result["step_tokens"],
         "tok/s": result["step_tokens_per_s"], "MFU": "-", "peak MiB": "-"},
    ]
    rows += [{"phase": name, "seconds": "-", "tokens": "-", "tok/s": tokens, "MFU": mfu, "peak MiB": "-"}
             for name, _, tokens, mfu in ANCHORS]
    print(_table(rows, ["phase", "seconds", "tokens", "tok/s", "MFU", "peak MiB"]))
    for name, source, _, _ in ANCHORS:
        print(f"  {name}: {source} (published, per GPU)")


def run_step_benchmark(shape: StepShape, tmp_path: Path, capsys) -> dict:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model_dir = tmp_path / "model"
    write_random_model(model_dir, shape.model)
    threads = torch.get_num_threads()  # the trainer's CPU thread policy sets it for the whole process
    trainer = build_trainer(model_dir, tmp_path / "run", shape)
    try:
        result = measure_step(trainer, shape)
    finally:
        distributed.teardown(trainer.context)
        torch.set_num_threads(threads)
    with capsys.disabled():
        print_step(result)
    return result


def test_cpu_tiny_rl_step(tmp_path, capsys):
    result = run_step_benchmark(CPU_SHAPE, tmp_path, capsys)
    _write_results("rl_step_cpu.json", result)
    assert result["optimizer_steps"] == 2 and result["update_mfu"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_qwen25_1_5b_rl_step(tmp_path, capsys):
    result = run_step_benchmark(GPU_SHAPE, tmp_path, capsys)
    _write_results("rl_step_gpu.json", result)
    assert result["optimizer_steps"] == 2


# ----------------------------------------------------------------------------- 7B memory


def micro_batch_peak_bytes(model, num_tokens: int, prompt_tokens: int = 512) -> float | None:
    """Peak bytes (``peak_memory_bytes``) of one packed micro-batch of a single ``num_tokens``-token sequence: the policy
    loss's forward under bf16 autocast and its backward, as ``step.optimizer_steps`` runs them (no optimizer step)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (num_tokens,), generator=generator).tolist()
    prompt, response = tokens[:prompt_tokens], tokens[prompt_tokens:]
    batch = build_micro_batch([prompt], [response], [[-4.0] * len(response)], torch.tensor([True]), torch.tensor([0.5]),
                              slice(0, 1), 0, 1, packed=True).to(device)
    loss_module = PolicyLoss(model, group_size=1, paper_objective=False, temperature=1.0,
                             loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))
    _sync(device)
    reset_peak_memory(device)
    with autocast_to(device, torch.bfloat16):
        loss, _ = loss_module(batch, 0.2)
    loss.backward()
    _sync(device)
    return peak_memory_bytes(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_7b_micro_batch_memory(capsys):
    num_tokens = 4096 if QUICK else 16384
    model = random_qwen2("qwen2.5-7b", device="cuda", dtype=torch.float32)
    prepare_for_training(model, gradient_checkpointing=True, packed_forward=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = micro_batch_peak_bytes(model, num_tokens)
    card = torch.cuda.get_device_name()
    total = torch.cuda.get_device_properties(0).total_memory
    result = {"card": card, "num_tokens": num_tokens, "attention": model.config._attn_implementation,
              "weights_bytes": weights, "peak_bytes": peak, "device_bytes": total}
    _write_results("memory_7b_gpu.json", result)
    with capsys.disabled():
        print(f"\n[7b memory] Qwen2.5-7B shape on {card}: one packed micro-batch of {num_tokens} tokens, bf16 autocast, "
              f"activation checkpointing, attention {result['attention']}: peak {peak / 2**30:.1f} GiB of "
              f"{total / 2**30:.1f} GiB (float32 weights {weights / 2**30:.1f} GiB and their gradients included; "
              f"no optimizer state)")
    assert peak < total
