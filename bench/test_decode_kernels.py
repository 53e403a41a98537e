"""The sampler's Triton kernels against their torch references, same inputs, one process.

    pytest bench/test_decode_kernels.py -s                                          # on a GPU
    TRITON_INTERPRET=1 EFFREASON_BENCH_QUICK=1 pytest bench/test_decode_kernels.py -s  # CPU dry run, tiny shapes

Each row times one call of a kernel (``effreason.kernels``) and of the torch code it replaces on the sampler's
GPU path (its reference), on a decode step of the Qwen2.5-0.5B shape in bf16 (512 sequences, hidden 896,
14 query and 2 KV heads of 64, intermediate 4864, vocabulary 151936, context 416, blocks of 16 tokens):

* ``add + rms_norm``: ``hidden += delta`` and the RMSNorm after it vs ``layers.rms_norm`` after a torch add;
* ``rope + kv write``: ``rope_write_kv`` vs ``layers.rotate`` of q and k and ``attention.write_kv``;
* ``swiglu``: ``silu_mul`` vs ``activation(gate).mul_(up)``;
* ``sample``: the draw from the bf16 logits vs ``sampling.sample``'s torch path (float32 logits,
  log-softmax, Gumbel kernel);
* ``attention``: the Triton paged attention vs the torch backend (gather + bmm);
* ``attention split-K``: 4 sequences of 16,384 tokens, split-K (as chosen for this GPU) vs one program per
  (sequence, KV head) vs torch;
* ``prefill``: the paged prefill kernel (``Sampler(paged_prefill=True)``) vs ``attention.prefill_attention``
  (flash-attn varlen when installed, else SDPA), 64 prompts of 64-256 tokens, and 16 prompts of 16 new
  tokens after 512 cached ones (the torch path: one SDPA call per prompt over its gathered context).

Times are medians of CUDA-event-timed calls after a warm-up; "peak MiB" is what one call allocates at most
beyond its inputs. Results also go to ``$EFFREASON_BENCH_RESULTS/decode_kernels_gpu.json`` (read by
``gpu_report.py``). Without a GPU the test skips, unless run as the dry run above.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from ceilings import _time_ms

from effreason import _backends

QUICK = os.environ.get("EFFREASON_BENCH_QUICK", "0") == "1"
RESULTS_DIR = os.environ.get("EFFREASON_BENCH_RESULTS", os.path.join(os.environ.get("TMPDIR", "/tmp"), "effreason_bench"))
REPEATS = 20
GPU_SHAPE = dict(rows=512, hidden=896, heads=14, kv_heads=2, head_dim=64, intermediate=4864, vocab=151936,
                 context=416, block_size=16, long_context=16384, long_seqs=4,
                 prompts=64, prompt_tokens=(64, 256), cached_prompts=16, cached_tokens=512, new_tokens=16)
DRY_RUN_SHAPE = dict(rows=4, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=112, vocab=96,
                     context=20, block_size=4, long_context=64, long_seqs=2,
                     prompts=3, prompt_tokens=(5, 12), cached_prompts=2, cached_tokens=8, new_tokens=3)
DRY_RUN_SPLITS = 4  # the interpreter has no multiprocessors to fill: split-K forced


def _device() -> torch.device | None:
    """CUDA when present; the CPU for the dry run under TRITON_INTERPRET=1 with EFFREASON_BENCH_QUICK=1."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if QUICK and _backends.triton_interpreted() else None


def _measure(fn, device: torch.device) -> tuple[float, float]:
    """(median milliseconds, peak MiB allocated beyond what existed before) of ``fn()`` after a warm-up call."""
    fn()
    repeats = 2 if device.type == "cpu" else REPEATS
    if device.type == "cpu":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[len(times) // 2], float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return _time_ms(fn, repeats), peak


def _paged(num_seqs: int, context: int, shape: dict, device, dtype, generator):
    """Query, caches holding ``num_seqs`` contexts of ``context`` tokens in shuffled blocks, tables, lengths."""
    blocks_per_seq = -(-context // shape["block_size"])
    num_blocks = num_seqs * blocks_per_seq
    query = torch.randn(num_seqs, shape["heads"], shape["head_dim"], generator=generator).to(device, dtype)
    k_cache, v_cache = (torch.randn(num_blocks, shape["kv_heads"], shape["block_size"], shape["head_dim"],
                                    generator=generator).to(device, dtype) for _ in range(2))
    tables = torch.randperm(num_blocks, generator=generator).view(num_seqs, blocks_per_seq).to(device, torch.int32)
    lens = torch.full((num_seqs,), context, dtype=torch.int32, device=device)
    return query, k_cache, v_cache, tables, lens


def _attention_contestants(num_seqs: int, context: int, shape: dict, device, dtype, generator, splits: list[int]):
    """Triton with each of ``splits`` and the torch backend's gather + bmm, on one layer's paged cache."""
    from effreason.kernels.paged_attention import paged_attention_decode
    from effreason.sampler import attention
    query, k_cache, v_cache, tables, lens = _paged(num_seqs, context, shape, device, dtype, generator)
    scale = shape["head_dim"] ** -0.5
    index = attention.gather_index(tables, shape["kv_heads"])
    mask = attention.padding_mask(lens, shape["kv_heads"], tables.shape[1] * shape["block_size"])
    triton = {f"{splits_}-split" if splits_ > 1 else "one pass": (
        lambda splits_=splits_: paged_attention_decode(query, k_cache, v_cache, tables, lens, scale, num_splits=splits_))
        for splits_ in splits}
    return triton, lambda: attention.attend_gathered(query, k_cache, v_cache, index, mask, scale)


def _prefill_contestants(cached: list[int], new: list[int], shape: dict, device, dtype, generator):
    """The paged prefill kernel and ``prefill_attention``'s own path, prompts of ``new`` tokens after ``cached``."""
    from effreason.kernels.paged_prefill import paged_prefill_attention
    from effreason.sampler import attention
    block_size, kv_heads, head_dim = shape["block_size"], shape["kv_heads"], shape["head_dim"]
    widths = [-(-(c + n) // block_size) for c, n in zip(cached, new)]
    num_blocks = sum(widths)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables = torch.zeros(len(new), max(widths), dtype=torch.int32)
    for index, width in enumerate(widths):
        tables[index, :width] = torch.tensor(order[sum(widths[:index]):sum(widths[:index]) + width])
    tables = tables.to(device)
    k_cache, v_cache = (torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=generator).to(device, dtype)
                        for _ in range(2))
    query, key, value = (torch.randn(sum(new), heads, head_dim, generator=generator).to(device, dtype)
                         for heads in (shape["heads"], kv_heads, kv_heads))
    ends = torch.tensor(new).cumsum(0)
    cu_seqlens = torch.cat([ends.new_zeros(1), ends]).to(device, torch.int32)
    meta = attention.AttentionMetadata(
        is_prefill=True, slot_mapping=torch.zeros(0, dtype=torch.int64, device=device),
        seq_bounds=list(zip((ends - torch.tensor(new)).tolist(), ends.tolist())), cu_seqlens=cu_seqlens,
        max_seqlen=max(new), prefix_lens=cached, prefix_tables=list(tables) if any(cached) else None)
    lens = torch.tensor([c + n for c, n in zip(cached, new)], dtype=torch.int32, device=device)
    scale = head_dim ** -0.5
    return (lambda: paged_prefill_attention(query, k_cache, v_cache, tables, cu_seqlens, lens, max(new), scale),
            lambda: attention.prefill_attention(query, key, value, k_cache, v_cache, meta, scale))


def _rows(device: torch.device) -> list[dict]:
    from effreason.kernels.paged_attention import _num_sms, choose_num_splits
    from effreason.kernels.rms_norm import rms_norm
    from effreason.kernels.rope_write_kv import rope_write_kv
    from effreason.kernels.swiglu import silu_mul
    from effreason.sampler.attention import write_kv
    from effreason.sampler.models.layers import rms_norm as torch_rms_norm
    from effreason.sampler.models.layers import rotate
    from effreason.sampler.params import SamplingParams
    from effreason.sampler.sampling import sample

    shape = GPU_SHAPE if device.type == "cuda" else DRY_RUN_SHAPE
    dtype, generator = torch.bfloat16, torch.Generator().manual_seed(0)
    num_rows, hidden_size, heads, kv_heads, head_dim = (shape[k] for k in ("rows", "hidden", "heads", "kv_heads", "head_dim"))
    randn = lambda *size: torch.randn(*size, generator=generator).to(device, dtype)  # noqa: E731
    results = []

    def row(name: str, ours, reference, reference_name: str) -> None:
        ours_ms, ours_mib = _measure(ours, device)
        reference_ms, reference_mib = _measure(reference, device)
        results.append({"op": name, "ms": ours_ms, "reference": reference_name, "reference ms": reference_ms,
                        "speedup": reference_ms / ours_ms, "peak MiB": ours_mib, "reference peak MiB": reference_mib})

    hidden, delta, weight = randn(num_rows, hidden_size), randn(num_rows, hidden_size), randn(hidden_size)
    row("add + rms_norm", lambda: rms_norm(hidden, weight, 1e-6, delta=delta),
        lambda: torch_rms_norm(hidden.add_(delta), weight, 1e-6, native=False), "torch add, layers.rms_norm")

    query, key, value = randn(num_rows, heads, head_dim), randn(num_rows, kv_heads, head_dim), randn(num_rows, kv_heads, head_dim)
    cos, sin = randn(2 * shape["context"], head_dim), randn(2 * shape["context"], head_dim)
    positions = torch.randint(0, 2 * shape["context"], (num_rows,), generator=generator).to(device)
    caches = [randn(num_rows, kv_heads, shape["block_size"], head_dim) for _ in range(2)]
    slots = (torch.randperm(num_rows, generator=generator) * shape["block_size"]).to(device)
    cos_rows, sin_rows = cos[positions][:, None], sin[positions][:, None]

    def torch_rope():
        write_kv(*caches, rotate(key, cos_rows, sin_rows), value, slots)
        return rotate(query, cos_rows, sin_rows)

    row("rope + kv write", lambda: rope_write_kv(query, key, value, cos, sin, positions, *caches, slots), torch_rope,
        "layers.rotate x2, write_kv")

    gate, up = randn(num_rows, shape["intermediate"]), randn(num_rows, shape["intermediate"])
    row("swiglu", lambda: silu_mul(gate, up), lambda: torch.nn.functional.silu(gate).mul_(up), "silu(gate).mul_(up)")

    logits = randn(num_rows, shape["vocab"])
    keys, steps = torch.arange(num_rows, device=device), torch.zeros(num_rows, dtype=torch.int64, device=device)
    params = SamplingParams(temperature=1.0, max_tokens=1)
    row("sample (bf16 logits)", lambda: sample(logits, params, keys, steps, triton=True),
        lambda: sample(logits, params, keys, steps, triton=False), "float32 logits, log_softmax, Gumbel kernel")

    attention_kernels, torch_attention = _attention_contestants(num_rows, shape["context"], shape, device, dtype,
                                                                 generator, [1])
    row(f"attention {num_rows} x {shape['context']}", attention_kernels["one pass"], torch_attention, "torch gather + bmm")

    long_seqs, long_context = shape["long_seqs"], shape["long_context"]
    splits = (choose_num_splits(long_seqs, kv_heads, long_context, _num_sms(device)) if device.type == "cuda"
              else DRY_RUN_SPLITS)
    attention_kernels, torch_attention = _attention_contestants(long_seqs, long_context, shape, device, dtype,
                                                                 generator, sorted({1, splits}))
    for name, kernel in attention_kernels.items():
        row(f"attention {long_seqs} x {long_context}, {name}", kernel, torch_attention, "torch gather + bmm")

    low, high = shape["prompt_tokens"]
    lengths = torch.randint(low, high + 1, (shape["prompts"],), generator=generator).tolist()
    kernel, reference = _prefill_contestants([0] * len(lengths), lengths, shape, device, dtype, generator)
    row(f"prefill {len(lengths)} x {low}-{high}", kernel, reference, "prefill_attention")
    cached_prompts = shape["cached_prompts"]
    kernel, reference = _prefill_contestants([shape["cached_tokens"]] * cached_prompts,
                                             [shape["new_tokens"]] * cached_prompts, shape, device, dtype, generator)
    row(f"prefill {cached_prompts} x {shape['new_tokens']} after {shape['cached_tokens']}", kernel, reference,
        "prefill_attention")
    return results


def table(results: list[dict]) -> str:
    lines = [f"  {'op':<34}{'ms':>9}{'ref ms':>9}{'speedup':>9}{'peak MiB':>10}{'ref MiB':>9}  reference"]
    for r in results:
        lines.append(f"  {r['op']:<34}{r['ms']:>9.3f}{r['reference ms']:>9.3f}{r['speedup']:>8.2f}x"
                     f"{r['peak MiB']:>10.1f}{r['reference peak MiB']:>9.1f}  {r['reference']}")
    return "\n".join(lines)


@pytest.mark.skipif(_device() is None, reason="needs a CUDA device (or TRITON_INTERPRET=1 with EFFREASON_BENCH_QUICK=1)")
def test_gpu_decode_kernels(capsys):
    device = _device()
    with torch.no_grad():
        results = _rows(device)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (triton interpreter dry run)"
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "decode_kernels_gpu.json"), "w") as handle:
        json.dump({"card": card, "dtype": "bfloat16", "rows": results}, handle, indent=2)
    with capsys.disabled():
        print(f"\n{card}: the sampler's Triton kernels vs their torch references (bf16, median times)")
        print(table(results))
    assert all(r["ms"] > 0 and r["reference ms"] > 0 for r in results)
