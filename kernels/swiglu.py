"""SwiGLU's gating in Triton: ``silu(gate) * up`` elementwise, one read of each input and one write.

    out = round(round(g / (1 + exp(-g))) * u)          g = gate, u = up; float32 inside

(Shazeer 2020, "GLU Variants Improve Transformer"; ``silu`` of Elfwing et al. 2018.) ``round`` is to the
inputs' dtype, as the sampler's torch path ``activation(gate).mul_(up)`` (``effreason.sampler.models.layers``,
this kernel's oracle) rounds SiLU's output before the product. Rows may be strided (gate and up can be two
halves of one fused projection). Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_COLUMNS = 1024  # columns per program


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, num_columns, stride_gate, stride_up, stride_out,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = columns < num_columns
    gate = tl.load(gate_ptr + row * stride_gate + columns, mask=valid, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + row * stride_up + columns, mask=valid, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + columns, (silu * up).to(out_ptr.dtype.element_ty), mask=valid)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (module docstring): gate, up (N, I) of one dtype -> a new contiguous (N, I)."""
    if gate.dtype not in DTYPES:
        raise ValueError(f"gate must be float32, bfloat16 or float16, got {gate.dtype}")
    if gate.dim() != 2 or gate.stride(-1) != 1:
        raise ValueError(f"gate must be (N, I) with a contiguous last dim, got shape {tuple(gate.shape)}, "
                         f"strides {gate.stride()}")
    if up.shape != gate.shape or up.dtype != gate.dtype or up.device != gate.device or up.stride(-1) != 1:
        raise ValueError(f"up must have gate's shape {tuple(gate.shape)}, dtype {gate.dtype} and device "
                         f"{gate.device} with a contiguous last dim, got {up.dtype} {tuple(up.shape)} on {up.device}")
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    num_rows, num_columns = gate.shape
    if out.numel() == 0:
        return out
    block = min(BLOCK_COLUMNS, triton.next_power_of_2(num_columns))
    _silu_mul_kernel[(num_rows, triton.cdiv(num_columns, block))](
        gate, up, out, num_columns, gate.stride(0), up.stride(0), out.stride(0), BLOCK=block)
    return out
