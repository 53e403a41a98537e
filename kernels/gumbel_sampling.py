"""Fused Gumbel-max sampling in Triton: one program per row, one pass over the vocabulary.

    token[b] = argmax_v (log_probs[b, v] - log(-log U[b, v]))

with counter-based uniforms ``U[b, v] = (top 23 bits of mix64(row[b] + G*v) + 0.5) / 2^23``, the stream of
row ``b`` being ``row[b] = mix64(key[b] * G + step[b])`` (``mix64`` the SplitMix64 finaliser, Steele et al. 2014;
``G = 0x9E3779B97F4A7C15``; Gumbel-max trick, Gumbel 1954 / Maddison et al. 2014). These are the numbers of the
torch reference ``uniform_noise`` in ``effreason/sampler/sampling.py``.

The torch version makes ~20 elementwise passes over (B, V) int64 / float32 temporaries; here the noise
lives in registers and each row keeps a running (max, argmax), so the only (B, V) traffic is one read
of ``log_probs``. Same tokens as the torch ``gumbel_argmax`` (ties go to the lowest index, like
``torch.argmax``). Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GOLDEN = tl.constexpr(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, SplitMix64's stream increment
MAX_BLOCK_V = 4096  # vocabulary columns per loop iteration of a program, at most
WIDE_BLOCK_V = 2048  # from this block width on, a program runs 8 warps (else 4)


@triton.jit
def _mix64(x):
    """SplitMix64 finaliser on uint64 (wrapping multiplication, logical shifts)."""
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _gumbel_argmax_kernel(log_probs_ptr, keys_ptr, steps_ptr, out_ptr, vocab_size, stride_row,
                          BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
    step = tl.load(steps_ptr + row).to(tl.uint64, bitcast=True)
    row_key = _mix64(key * GOLDEN + step)
    offsets = tl.arange(0, BLOCK_V)
    best_score = tl.full((BLOCK_V,), float("-inf"), tl.float32)  # per lane: best score seen, and where
    best_column = tl.zeros((BLOCK_V,), tl.int64)
    for start in range(0, vocab_size, BLOCK_V):
        columns = start + offsets
        valid = columns < vocab_size
        log_probs = tl.load(log_probs_ptr + row * stride_row + columns, mask=valid, other=float("-inf"))
        bits = _mix64(row_key + columns.to(tl.uint64) * GOLDEN)
        uniform = ((bits >> 41).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # (top 23 bits + 0.5) / 2^23
        score = tl.where(valid, log_probs.to(tl.float32) - tl.log(-tl.log(uniform)), float("-inf"))
        better = score > best_score  # strict: a lane keeps its earliest column on ties
        best_column = tl.where(better, columns.to(tl.int64), best_column)
        best_score = tl.where(better, score, best_score)
    top = tl.max(best_score, axis=0)
    best_index = tl.min(tl.where(best_score == top, best_column, vocab_size), axis=0)  # first column reaching top
    tl.store(out_ptr + row, best_index)


def gumbel_argmax(log_probs: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``argmax_v(log_probs[b, v] + Gumbel noise of stream keys[b] at steps[b])``: (B, V) float32 -> (B,) int64.

    Same contract and numbers as the torch reference ``gumbel_argmax`` of ``effreason/sampler/sampling.py``.
    """
    if log_probs.dim() != 2 or log_probs.dtype != torch.float32 or log_probs.stride(-1) != 1:
        raise ValueError(f"log_probs must be float32 (B, V) with a contiguous last dim, got "
                         f"{log_probs.dtype} {tuple(log_probs.shape)}")
    num_rows, vocab_size = log_probs.shape
    for name, tensor in (("keys", keys), ("steps", steps)):
        if tensor.shape != (num_rows,) or tensor.dtype != torch.int64 or tensor.device != log_probs.device:
            raise ValueError(f"{name} must be int64 of shape ({num_rows},) on {log_probs.device}, got "
                             f"{tensor.dtype} {tuple(tensor.shape)} on {tensor.device}")
    if vocab_size < 1:
        raise ValueError("log_probs must have at least one column")
    out = torch.empty(num_rows, dtype=torch.int64, device=log_probs.device)
    if num_rows == 0:
        return out
    block = min(MAX_BLOCK_V, triton.next_power_of_2(vocab_size))
    _gumbel_argmax_kernel[(num_rows,)](log_probs, keys.contiguous(), steps.contiguous(), out, vocab_size,
                                       log_probs.stride(0),
                                       BLOCK_V=block, num_warps=8 if block >= WIDE_BLOCK_V else 4)
    return out
