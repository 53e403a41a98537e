"""Token draws in Triton straight from the logits: one program per row, one pass over the vocabulary.

    token[b]   = argmax_v (z[b, v] / T - log(-log U[b, v]))        (greedy: argmax_v z[b, v])
    logprob[b] = z[b, token[b]] / T - lse_b,   lse_b = log sum_v exp(z[b, v] / T)

with counter-based uniforms ``U[b, v] = (top 23 bits of mix64(row[b] + G*v) + 0.5) / 2^23``, the stream of
row ``b`` being ``row[b] = mix64(key[b] * G + step[b])`` (``mix64`` the SplitMix64 finaliser, Steele et al. 2014;
``G = 0x9E3779B97F4A7C15``; Gumbel-max trick, Gumbel 1954 / Maddison et al. 2014). These are the numbers of the
torch reference ``uniform_noise`` in ``effreason/sampler/sampling.py``, whose torch path of ``sample`` is the
oracle: the argmax of ``log_softmax(z / T) + Gumbel`` is that of ``z / T + Gumbel`` (the log-sum-exp is one
constant per row), so the draw needs no normalised row and the log-sum-exp is accumulated alongside it
(online, as in ``fused_logprobs``). ``z`` is read in its own dtype (bf16 logits need no float32 copy);
everything inside is float32. Ties go to the lowest index, like ``torch.argmax``.

``gumbel_argmax`` draws from given log-probs (a truncated distribution: -inf outside top-k / top-p) with the
same kernel at T = 1, without the log-sum-exp: the same tokens as the torch ``gumbel_argmax``. Runs on CUDA,
or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GOLDEN = tl.constexpr(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, SplitMix64's stream increment
MAX_BLOCK_V = 4096  # vocabulary columns per loop iteration of a program, at most
WIDE_BLOCK_V = 2048  # from this block width on, a program runs 8 warps (else 4)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _mix64(x):
    """SplitMix64 finaliser on uint64 (wrapping multiplication, logical shifts)."""
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _sample_kernel(logits_ptr, keys_ptr, steps_ptr, tokens_ptr, logprobs_ptr, vocab_size, stride_row, temperature,
                   GREEDY: tl.constexpr, LOGPROBS: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * stride_row
    if not GREEDY:
        key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
        step = tl.load(steps_ptr + row).to(tl.uint64, bitcast=True)
        row_key = _mix64(key * GOLDEN + step)
    offsets = tl.arange(0, BLOCK_V)
    best_score = tl.full((BLOCK_V,), float("-inf"), tl.float32)  # per lane: best score seen, and where
    best_column = tl.zeros((BLOCK_V,), tl.int64)
    running_max = float("-inf")  # of z / T over the tiles so far
    sum_exp = 0.0  # sum exp(z / T - running_max)
    for start in range(0, vocab_size, BLOCK_V):
        columns = start + offsets
        valid = columns < vocab_size
        scaled = tl.load(row_logits + columns, mask=valid, other=float("-inf")).to(tl.float32)
        if not GREEDY:
            scaled = tl.div_rn(scaled, temperature)
            bits = _mix64(row_key + columns.to(tl.uint64) * GOLDEN)
            uniform = ((bits >> 41).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # (top 23 bits + 0.5) / 2^23
            score = tl.where(valid, scaled - tl.log(-tl.log(uniform)), float("-inf"))
        else:
            score = scaled
        better = score > best_score  # strict: a lane keeps its earliest column on ties
        best_column = tl.where(better, columns.to(tl.int64), best_column)
        best_score = tl.where(better, score, best_score)
        if LOGPROBS:
            new_max = tl.maximum(running_max, tl.max(scaled, axis=0))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a row of -inf so far: no nan
            sum_exp = sum_exp * tl.exp(running_max - shift) + tl.sum(tl.exp(scaled - shift), axis=0)
            running_max = new_max
    top = tl.max(best_score, axis=0)
    token = tl.min(tl.where(best_score == top, best_column, vocab_size), axis=0)  # first column reaching top
    tl.store(tokens_ptr + row, token)
    if LOGPROBS:
        picked = tl.load(row_logits + token).to(tl.float32)
        if not GREEDY:
            picked = tl.div_rn(picked, temperature)
        tl.store(logprobs_ptr + row, picked - running_max - tl.log(sum_exp))


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.dtype not in DTYPES or logits.stride(-1) != 1:
        raise ValueError(f"{name} must be float32, bfloat16 or float16 (B, V) with a contiguous last dim, got "
                         f"{logits.dtype} {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column")


def _check_streams(logits: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> None:
    num_rows = logits.shape[0]
    for name, tensor in (("keys", keys), ("steps", steps)):
        if tensor.shape != (num_rows,) or tensor.dtype != torch.int64 or tensor.device != logits.device:
            raise ValueError(f"{name} must be int64 of shape ({num_rows},) on {logits.device}, got "
                             f"{tensor.dtype} {tuple(tensor.shape)} on {tensor.device}")


def _launch(logits: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor, temperature: float, greedy: bool,
            logprobs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B,) int64 and, with ``logprobs``, their float32 log-probs (B,) (else an empty tensor)."""
    num_rows, vocab_size = logits.shape
    tokens = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    token_logprobs = torch.empty(num_rows if logprobs else 0, dtype=torch.float32, device=logits.device)
    if num_rows == 0:
        return tokens, token_logprobs
    block = min(MAX_BLOCK_V, triton.next_power_of_2(vocab_size))
    _sample_kernel[(num_rows,)](logits, keys.contiguous(), steps.contiguous(), tokens, token_logprobs,
                                vocab_size, logits.stride(0), float(temperature),
                                GREEDY=greedy, LOGPROBS=logprobs, BLOCK_V=block,
                                num_warps=8 if block >= WIDE_BLOCK_V else 4)
    return tokens, token_logprobs


def gumbel_sample(logits: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row from ``softmax(logits / temperature)`` (module docstring): logits (B, V) float32, bf16 or
    fp16 -> ``(tokens, logprobs)``, (B,) int64 and float32 ``log_softmax(logits / temperature)[token]``.

    ``keys``, ``steps`` (B,) int64: each row's noise stream and step (``sampling.uniform_noise``).
    """
    _check_logits("logits", logits)
    _check_streams(logits, keys, steps)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _launch(logits, keys, steps, temperature, greedy=False, logprobs=True)


def greedy_sample(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax(logits), log_softmax(logits)[argmax])`` per row: (B, V) -> (B,) int64, (B,) float32."""
    _check_logits("logits", logits)
    unused = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    return _launch(logits, unused, unused, 1.0, greedy=True, logprobs=True)


def gumbel_argmax(log_probs: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``argmax_v(log_probs[b, v] + Gumbel noise of stream keys[b] at steps[b])``: (B, V) -> (B,) int64.

    Same contract and numbers as the torch reference ``gumbel_argmax`` of ``effreason/sampler/sampling.py``.
    """
    _check_logits("log_probs", log_probs)
    _check_streams(log_probs, keys, steps)
    return _launch(log_probs, keys, steps, 1.0, greedy=False, logprobs=False)[0]
