"""Where a sampler decode step spends its time: host profile, device kernels and the parts alone.

    python bench/profile_sampler.py [--prompts 64] [--samples 8] [--tokens 32] [--out DIR]

Runs the GPU benchmark's Qwen2.5-0.5B-shaped random bf16 model (the tiny CPU model without CUDA) and
prints: tokens/s with each usable decode-attention backend; the host functions that take the most time (cProfile,
one ``generate``; time blocked in ``.cpu()`` is the device's); the device kernels that take the most
time (torch.profiler); and the per-step cost of each part alone (decode forward, logits, sampling,
paged attention per backend), each timed after a warm-up.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

import torch
from test_sampler_throughput import qwen25_half_b, random_prompts, timed, tiny_qwen2  # bench/, the script's folder

from effreason.sampler import Sampler, SamplingParams, attention
from effreason.sampler.sampling import sample


def _per_call_ms(fn, device: torch.device, repeats: int = 20) -> float:
    """Median wall milliseconds of ``fn()`` after one warm-up call."""
    fn()
    times = sorted(timed(fn, device)[0] for _ in range(repeats))
    return times[len(times) // 2] * 1e3


def _throughput(sampler: Sampler, prompts, params: SamplingParams, device: torch.device) -> float:
    sampler.generate(prompts[:2], SamplingParams(n=2, max_tokens=4, seed=0))
    wall, _ = timed(lambda: sampler.generate(prompts, params), device)
    return len(prompts) * params.n * params.max_tokens / wall


def host_profile(sampler: Sampler, prompts, params: SamplingParams, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    sampler.generate(prompts, params)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def device_profile(sampler: Sampler, prompts, params: SamplingParams, top: int) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        sampler.generate(prompts, params)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=top)


def parts(sampler: Sampler, model, batch: int, context: int, device: torch.device) -> list[tuple[str, float]]:
    """Per-step milliseconds of the decode step's parts at ``batch`` sequences of ``context`` tokens."""
    paged, runner = sampler.model, sampler.runner
    vocab = model.config.vocab_size
    blocks = -(-context // sampler.block_size)
    tables = torch.arange(batch * blocks, device=device, dtype=torch.int32).view(batch, blocks) % runner.num_blocks
    positions = torch.full((batch,), context - 1, device=device)
    input_ids = torch.randint(0, vocab, (batch,), device=device)
    rows = []
    slots = tables.long().gather(1, (positions // sampler.block_size)[:, None])[:, 0] * sampler.block_size
    meta = attention.AttentionMetadata(is_prefill=False, slot_mapping=slots, block_tables=tables,
                                       context_lens=(positions + 1).to(torch.int32))
    if runner.graphs is not None:
        rows.append(("decode forward (graph replay)", _per_call_ms(
            lambda: runner.graphs.run(input_ids, positions, tables, slots, meta.context_lens), device)))
    meta.gather_index = attention.gather_index(tables, paged.num_kv_heads)
    meta.padding_mask = attention.padding_mask(meta.context_lens, paged.num_kv_heads, blocks * sampler.block_size)
    def forward():
        return paged.forward(input_ids, positions, runner.kv_cache, meta, runner.backend)

    rows.append((f"decode forward (eager, {runner.backend})", _per_call_ms(forward, device)))
    hidden = forward()
    rows.append((f"logits (lm_head, {paged.dtype})", _per_call_ms(lambda: paged.logits(hidden), device)))
    logits = paged.logits(hidden)
    keys = torch.arange(batch, device=device)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    params = SamplingParams(temperature=1.0, max_tokens=1)
    rows.append((f"sample (T=1, {'triton' if runner.triton else 'torch'})",
                 _per_call_ms(lambda: sample(logits, params, keys, steps, runner.triton), device)))
    query = torch.randn(batch, paged.shape.num_heads, paged.head_dim, device=device, dtype=paged.dtype)
    cache = runner.kv_cache[0]
    backends = ["torch", "triton"] if device.type == "cuda" else ["torch", "native"]
    for backend in backends:
        try:
            rows.append((f"attention one layer ({backend})", _per_call_ms(
                lambda: attention.decode_attention(backend, query, cache[0], cache[1], meta, paged.shape.scale), device)))
        except Exception as error:  # a backend missing on this machine
            rows.append((f"attention one layer ({backend}): {type(error).__name__}", float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=416, help="context length for the parts alone")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = qwen25_half_b(device) if device.type == "cuda" else tiny_qwen2()
    prompts = random_prompts(args.prompts, model.config.vocab_size, 64, 256)
    params = SamplingParams(n=args.samples, temperature=1.0, max_tokens=args.tokens, seed=0)
    batch = args.prompts * args.samples
    report = []
    with torch.no_grad():
        for backend in attention.usable_decode_backends(device, model.dtype, 16):
            sampler = Sampler(model, max_num_seqs=batch, prefix_caching=False, attention_backend=backend,
                              kv_cache_tokens=batch * (256 + args.context + args.tokens))
            tokens_per_s = _throughput(sampler, prompts, params, device)
            report.append(f"{backend} attention, cuda graphs {sampler.runner.graphs is not None}: {tokens_per_s:.0f} "
                          f"tokens/s ({batch} sequences x {args.tokens} tokens)")
            print(report[-1], flush=True)
        sampler = Sampler(model, max_num_seqs=batch, prefix_caching=False,
                          kv_cache_tokens=batch * (256 + args.context + args.tokens))
        _throughput(sampler, prompts, params, device)
        report.append("\n".join(f"{name:<44}{ms:9.3f} ms" for name, ms in parts(sampler, model, batch, args.context, device)))
        print(report[-1], flush=True)
        report.append(host_profile(sampler, prompts, params, args.top))
        print(report[-1], flush=True)
        if device.type == "cuda":
            report.append(device_profile(sampler, prompts, params, args.top))
            print(report[-1], flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_sampler.txt").write_text("\n".join(report))


if __name__ == "__main__":
    main()
