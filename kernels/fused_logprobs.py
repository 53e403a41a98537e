"""Triton row kernels of the fused log-prob / policy-loss ops (``effreason.ops.fused``, backend "triton").

The chunk loop (``effreason.ops.chunked_kernels``) computes a logits chunk z (C, V) with one matmul;
these kernels do everything per row of it in float32, one program per row, over vocabulary tiles:

* ``row_stats``: online log-sum-exp (running max starting at -inf, rescaled sums), giving
  ``logp_target = z_target - lse``, ``lse`` and the entropy ``H = lse - sum_v p_v z_v``
  (accumulated relative to the running max, so large logits do not cancel).
* ``row_grad_``: overwrite z with ``dz_v = g (onehot_v - p_v) - gH p_v (log p_v + H)``,
  ``p_v = exp(z_v - lse)``, in z's dtype; the loop then does ``dz @ W`` and ``dz.T @ x``.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (CI).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_stats_kernel(
    logits_ptr, row_stride, targets_ptr, logprobs_ptr, lse_ptr, entropy_ptr, vocab_size, BLOCK_V: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK_V)
    running_max = -float("inf")
    sum_exp = 0.0  # sum_v exp(z_v - running_max)
    sum_exp_shifted = 0.0  # sum_v exp(z_v - running_max) * (z_v - running_max)
    for tile_start in range(0, vocab_size, BLOCK_V):
        in_vocab = tile_start + offsets < vocab_size
        z = tl.load(row_ptr + tile_start + offsets, mask=in_vocab, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        rescale = tl.exp(running_max - new_max)  # 0 on the first tile (running_max = -inf)
        shift_fix = sum_exp * tl.where(sum_exp > 0, running_max - new_max, 0.0)
        exp_z = tl.where(in_vocab, tl.exp(z - new_max), 0.0)
        shifted = tl.where(in_vocab, z - new_max, 0.0)
        sum_exp_shifted = rescale * (sum_exp_shifted + shift_fix) + tl.sum(exp_z * shifted, axis=0)
        sum_exp = rescale * sum_exp + tl.sum(exp_z, axis=0)
        running_max = new_max
    log_sum = tl.log(sum_exp)
    target = tl.load(targets_ptr + row)
    target_logit = tl.load(row_ptr + target).to(tl.float32)
    lse = running_max + log_sum
    tl.store(lse_ptr + row, lse)
    tl.store(logprobs_ptr + row, target_logit - lse)
    tl.store(entropy_ptr + row, log_sum - sum_exp_shifted / sum_exp)


@triton.jit
def _row_grad_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    lse_ptr,
    coef_ptr,
    entropy_coef_ptr,
    entropy_ptr,
    vocab_size,
    BLOCK_V: tl.constexpr,
    HAS_ENTROPY_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK_V)
    target = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    coef = tl.load(coef_ptr + row)
    if HAS_ENTROPY_GRAD:
        entropy_coef = tl.load(entropy_coef_ptr + row)
        entropy = tl.load(entropy_ptr + row)
    for tile_start in range(0, vocab_size, BLOCK_V):
        columns = tile_start + offsets
        in_vocab = columns < vocab_size
        z = tl.load(row_ptr + columns, mask=in_vocab, other=0.0)
        logp = z.to(tl.float32) - lse
        probs = tl.exp(logp)
        if HAS_ENTROPY_GRAD:
            grad = -probs * (coef + entropy_coef * (logp + entropy))
        else:
            grad = -probs * coef
        grad = tl.where(columns == target, grad + coef, grad)
        tl.store(row_ptr + columns, grad.to(z.dtype), mask=in_vocab)


def _block_size(vocab_size: int) -> int:
    return min(triton.next_power_of_2(vocab_size), 4096)


def _check_rows(logits: torch.Tensor, targets: torch.Tensor, **row_vectors) -> None:
    """Validate a logits chunk (C, V) with unit column stride and its per-row vectors."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be 2-D with contiguous rows, got {tuple(logits.shape)}, strides {logits.stride()}")
    rows = logits.shape[0]
    if targets.shape != (rows,) or targets.dtype != torch.int64 or not targets.is_contiguous():
        raise ValueError(f"targets must be contiguous int64 ({rows},), got {targets.dtype} {tuple(targets.shape)}")
    for name, vector in row_vectors.items():
        if vector is not None and (vector.shape != (rows,) or vector.dtype != torch.float32 or not vector.is_contiguous()):
            raise ValueError(f"{name} must be contiguous float32 ({rows},), got {vector.dtype} {tuple(vector.shape)}")
        if vector is not None and vector.device != logits.device:
            raise ValueError(f"{name} must be on {logits.device}, got {vector.device}")


def row_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of logits (C, V): ``(log p_target, lse, entropy)``, each float32 (C,). Targets must be in [0, V)."""
    _check_rows(logits, targets)
    rows, vocab_size = logits.shape
    logprobs, lse, entropy = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3))
    if rows:
        _row_stats_kernel[(rows,)](
            logits, logits.stride(0), targets, logprobs, lse, entropy, vocab_size, BLOCK_V=_block_size(vocab_size)
        )
    return logprobs, lse, entropy


def row_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    entropy_coef: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite logits (C, V) with ``coef (onehot - p) - entropy_coef p (log p + H)`` and return them."""
    _check_rows(logits, targets, lse=lse, coef=coef, entropy_coef=entropy_coef, entropy=entropy)
    has_entropy_grad = entropy_coef is not None
    if has_entropy_grad and entropy is None:
        raise ValueError("entropy is required with entropy_coef")
    rows, vocab_size = logits.shape
    if rows:
        _row_grad_kernel[(rows,)](
            logits, logits.stride(0), targets, lse, coef,
            entropy_coef if has_entropy_grad else coef, entropy if has_entropy_grad else lse,
            vocab_size, BLOCK_V=_block_size(vocab_size), HAS_ENTROPY_GRAD=has_entropy_grad,
        )
    return logits
