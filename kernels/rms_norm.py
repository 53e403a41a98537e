"""RMSNorm with the residual add fused, in Triton: one program per row, one read and one write of each.

    hidden <- hidden + delta                                    (with ``delta``: in place, in hidden's dtype)
    out     = weight * round(hidden / sqrt(mean(hidden^2) + eps))

(Zhang & Sennrich 2019.) The statistics are float32; ``round`` is to hidden's dtype, then the product with
the weight is rounded again: HF's rounding order, and that of the torch reference
``effreason.sampler.models.layers.rms_norm`` (applied to ``hidden + delta``), which is this kernel's oracle.
In the decoder layer the add is the attention's or the MLP's output joining the residual stream, and the
norm the next one's input; without ``delta`` it is a plain RMSNorm (the per-head q/k norms of Qwen3).
Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_COLUMNS = 65536  # a row lives in registers: wider rows are refused
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _add_rms_norm_kernel(hidden_ptr, delta_ptr, weight_ptr, out_ptr, num_columns, eps,
                         stride_hidden, stride_delta, stride_out,
                         HAS_DELTA: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_C)
    valid = columns < num_columns
    hidden_row = hidden_ptr + row * stride_hidden + columns
    hidden = tl.load(hidden_row, mask=valid, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * stride_delta + columns, mask=valid, other=0.0)
        hidden = (hidden.to(tl.float32) + delta.to(tl.float32)).to(hidden_ptr.dtype.element_ty)
        tl.store(hidden_row, hidden, mask=valid)
    hidden = hidden.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(hidden * hidden, axis=0) / num_columns + eps)
    normed = (hidden * inv_rms).to(out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + columns, mask=valid, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + columns, (weight * normed).to(out_ptr.dtype.element_ty), mask=valid)


def _rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (..., C) as rows (R, C) without a copy (ValueError when its layout does not allow one)."""
    if tensor.dim() < 1 or tensor.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim, got shape {tuple(tensor.shape)}, "
                         f"strides {tensor.stride()}")
    try:
        return tensor.view(-1, tensor.shape[-1])
    except RuntimeError as error:
        raise ValueError(f"{name} must be viewable as rows (R, {tensor.shape[-1]}) without a copy, got strides "
                         f"{tensor.stride()}") from error


def _check_inputs(hidden, weight, eps, delta) -> None:
    if hidden.dtype not in DTYPES:
        raise ValueError(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    num_columns = hidden.shape[-1] if hidden.dim() else 0
    if not 1 <= num_columns <= MAX_COLUMNS:
        raise ValueError(f"hidden's last dim must be in [1, {MAX_COLUMNS}], got shape {tuple(hidden.shape)}")
    if weight.shape != (num_columns,) or weight.dtype != hidden.dtype or weight.device != hidden.device \
            or weight.stride(0) != 1:
        raise ValueError(f"weight must be contiguous ({num_columns},) of hidden's dtype {hidden.dtype} on "
                         f"{hidden.device}, got {weight.dtype} {tuple(weight.shape)} on {weight.device}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if delta is not None and (delta.shape != hidden.shape or delta.dtype != hidden.dtype
                              or delta.device != hidden.device):
        raise ValueError(f"delta must have hidden's shape {tuple(hidden.shape)}, dtype and device, got "
                         f"{delta.dtype} {tuple(delta.shape)} on {delta.device}")


def _num_warps(block: int) -> int:
    """4 warps for rows up to 2048 columns, then 8, and 16 from 8192 (Liger-Kernel's ``calculate_settings``)."""
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float,
             delta: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * RMSNorm(hidden)`` over the last dim (module docstring): (..., C) -> a new (..., C) tensor.

    With ``delta`` (hidden's shape and dtype), ``hidden += delta`` in place first (the residual add) and
    the norm is that sum's. ``weight`` (C,) has hidden's dtype.
    """
    _check_inputs(hidden, weight, eps, delta)
    rows = _rows("hidden", hidden)
    delta_rows = _rows("delta", delta) if delta is not None else rows
    out = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    if rows.shape[0] == 0:
        return out
    out_rows = out.view(rows.shape)
    block = triton.next_power_of_2(rows.shape[1])
    _add_rms_norm_kernel[(rows.shape[0],)](
        rows, delta_rows, weight, out_rows, rows.shape[1], float(eps),
        rows.stride(0), delta_rows.stride(0), out_rows.stride(0),
        HAS_DELTA=delta is not None, BLOCK_C=block, num_warps=_num_warps(block))
    return out
