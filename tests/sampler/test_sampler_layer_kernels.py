"""The decoder layer's Triton kernels against the sampler's torch path (their reference, ``models/layers.py``):
residual add + RMSNorm, RoPE with the paged KV-cache write, SwiGLU's gating; bad input refused.

The Triton cases run on a GPU, or on the CPU under TRITON_INTERPRET=1: without a GPU, a test re-runs
them in a subprocess with that variable set (it must be set before anything imports Triton).

Rounding: the kernels round where the torch path rounds, so float32 and float16 results of the elementwise
kernels are exact, and bf16 ones on the GPU. Triton's interpreter converts float32 to bf16 by truncation
(its numpy emulation; the GPU rounds to nearest even), so under it bf16 is compared within ``TOLERANCE``.
The norms and SiLU differ from torch in their reductions and ``exp``: within ``TOLERANCE`` everywhere.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effreason import _backends
from effreason.sampler.attention import write_kv
from effreason.sampler.models.layers import rms_norm as torch_rms_norm
from effreason.sampler.models.layers import rotate

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
triton_usable = _backends.triton_usable_on(DEVICE)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol): two roundings to the dtype (two ulps), float32 at reduction-order level
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2**-9), torch.bfloat16: (3e-2, 2**-6)}
TRUNCATES_BF16 = DEVICE.type == "cpu"  # the interpreter's float32 -> bf16 conversion


def _close(actual, expected, dtype, exact: bool) -> None:
    if exact and not (dtype == torch.bfloat16 and TRUNCATES_BF16):
        assert torch.equal(actual, expected), (actual.float() - expected.float()).abs().max()
    else:
        atol, rtol = TOLERANCE[dtype]
        torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.skipif(triton_usable or not _backends.has_triton(), reason="the triton cases run directly")
def test_triton_cases_under_the_interpreter(run_triton_cases_interpreted):
    run_triton_cases_interpreted(__file__)


# ------------------------------------------------------------------ residual add + RMSNorm
# (rows, columns): one element, primes, a Qwen2.5-0.5B row, a row past a power of two (16 warps)
NORM_SHAPES = [(1, 1), (7, 37), (3, 5, 24), (2, 896), (3, 4099)]


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_triton_rms_norm_matches_torch(shape, dtype):
    from effreason.kernels.rms_norm import rms_norm
    hidden, delta = _randn(*shape, dtype=dtype, seed=0), _randn(*shape, dtype=dtype, seed=1)
    weight = (_randn(shape[-1], dtype=torch.float32, seed=2).abs() + 0.5).to(dtype)
    _close(rms_norm(hidden, weight, 1e-6), torch_rms_norm(hidden, weight, 1e-6, native=False), dtype, exact=False)
    expected_sum = hidden + delta
    out = rms_norm(hidden, weight, 1e-6, delta=delta)
    _close(hidden, expected_sum, dtype, exact=True)  # the residual add, in place
    _close(out, torch_rms_norm(expected_sum, weight, 1e-6, native=False), dtype, exact=False)


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
def test_triton_rms_norm_reads_strided_rows():
    """Rows further apart than their width (a slice of a wider tensor) give the contiguous result, and the
    residual add touches only the slice."""
    from effreason.kernels.rms_norm import rms_norm
    wide, delta = _randn(5, 80, dtype=torch.float32, seed=3), _randn(5, 48, dtype=torch.float32, seed=4)
    weight = torch.ones(48, device=DEVICE)
    rest = wide[:, 48:].clone()
    expected_sum = wide[:, :48] + delta
    expected = rms_norm(wide[:, :48].contiguous(), weight, 1e-5, delta=delta)
    out = rms_norm(wide[:, :48], weight, 1e-5, delta=delta)
    assert torch.equal(out, expected) and torch.equal(wide[:, :48], expected_sum) and torch.equal(wide[:, 48:], rest)


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_rms_norm_rejects_bad_inputs():
    from effreason.kernels.rms_norm import rms_norm
    hidden, weight = torch.zeros(3, 8), torch.ones(8)
    with pytest.raises(ValueError, match="hidden"):
        rms_norm(hidden.double(), weight.double(), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(hidden, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(hidden, weight.half(), 1e-6)
    with pytest.raises(ValueError, match="delta"):
        rms_norm(hidden, weight, 1e-6, delta=torch.zeros(3, 7))
    with pytest.raises(ValueError, match="eps"):
        rms_norm(hidden, weight, -1.0)
    with pytest.raises(ValueError, match="hidden"):
        rms_norm(torch.zeros(8, 3).t(), torch.ones(8), 1e-6)


# ------------------------------------------------------------------ RoPE + paged KV-cache write
# (tokens, heads, kv_heads, head_dim, block_size, num_blocks): a single token and head pair, Llama's
# group of 3, odd half widths (5, 12), Qwen2.5-0.5B heads, blocks of one row
ROPE_SHAPES = [(1, 1, 1, 2, 1, 2), (5, 6, 2, 24, 4, 9), (7, 5, 5, 10, 2, 11), (3, 14, 2, 64, 16, 4),
               (4, 3, 1, 128, 8, 3)]


def _rope_inputs(shape, dtype, fused_qkv: bool):
    """Query, key, value (views of one fused projection when ``fused_qkv``), RoPE tables, positions, caches and
    distinct slots. The tables are HF's layout: ``cat(cos(angles), cos(angles))``."""
    num_tokens, num_heads, num_kv_heads, head_dim, block_size, num_blocks = shape
    generator = torch.Generator().manual_seed(sum(shape))
    widths = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = torch.randn(num_tokens, sum(widths), generator=generator).to(DEVICE, dtype)
    query, key, value = (part.view(num_tokens, -1, head_dim) for part in qkv.split(widths, 1))  # strided views
    if not fused_qkv:
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    num_positions = 40
    angles = torch.randn(num_positions, head_dim // 2, generator=generator) * 3
    cos = torch.cat([angles.cos()] * 2, -1).to(DEVICE, dtype)
    sin = torch.cat([angles.sin()] * 2, -1).to(DEVICE, dtype)
    positions = torch.randint(0, num_positions, (num_tokens,), generator=generator).to(DEVICE)
    k_cache = torch.randn(num_blocks, num_kv_heads, block_size, head_dim, generator=generator).to(DEVICE, dtype)
    v_cache = torch.randn(num_blocks, num_kv_heads, block_size, head_dim, generator=generator).to(DEVICE, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens].to(DEVICE)
    return query, key, value, cos, sin, positions, k_cache, v_cache, slots


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("fused_qkv", [False, True], ids=["separate", "fused_qkv_views"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=str)
def test_triton_rope_write_kv_matches_torch(shape, dtype, fused_qkv):
    """q and k rotated in place as ``layers.rotate``; the caches after the write equal ``attention.write_kv``'s:
    exactly, slot by slot, and every other slot untouched."""
    from effreason.kernels.rope_write_kv import rope_write_kv
    inputs = _rope_inputs(shape, dtype, fused_qkv)
    # the reference on the CPU, whose addcmul_ is one fused multiply-add like the kernel's (on every device)
    query, key, value, cos, sin, positions, k_cache, v_cache, slots = (tensor.cpu().clone() for tensor in inputs)
    cos_rows, sin_rows = cos[positions][:, None], sin[positions][:, None]
    expected_query, expected_key = rotate(query, cos_rows, sin_rows), rotate(key, cos_rows, sin_rows)
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    write_kv(expected_k_cache, expected_v_cache, expected_key, value, slots)

    rope_write_kv(*inputs)
    query, key, written_value, _, _, _, k_cache, v_cache, _ = (tensor.cpu() for tensor in inputs)
    _close(query, expected_query, dtype, exact=True)
    _close(key, expected_key, dtype, exact=True)
    _close(k_cache, expected_k_cache, dtype, exact=True)
    assert torch.equal(written_value, value)
    assert torch.equal(v_cache, expected_v_cache)
    written_k_cache = expected_k_cache.clone()
    write_kv(written_k_cache, v_cache.clone(), key, value, slots)  # the key the kernel returned, where it wrote it
    assert torch.equal(k_cache, written_k_cache)


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_rope_write_kv_rejects_bad_inputs():
    from effreason.kernels.rope_write_kv import rope_write_kv
    args = _rope_inputs(ROPE_SHAPES[1], torch.float32, fused_qkv=False)
    query, key, value, cos, sin, positions, k_cache, v_cache, slots = args
    cases = {
        "query": (query[..., :-1], key, value, cos, sin, positions, k_cache, v_cache, slots),
        "value": (query, key, value[:, :1], cos, sin, positions, k_cache, v_cache, slots),
        "sin_table": (query, key, value, cos, sin[:5], positions, k_cache, v_cache, slots),
        "k_cache": (query, key, value, cos, sin, positions, k_cache.double(), v_cache, slots),
        "positions": (query, key, value, cos, sin, positions.int(), k_cache, v_cache, slots),
        "slot_mapping": (query, key, value, cos, sin, positions, k_cache, v_cache, slots[:2]),
    }
    if DEVICE.type == "cpu":
        cases["positions must be in"] = (query, key, value, cos, sin, positions + 100, k_cache, v_cache, slots)
        cases["slot_mapping must be in"] = (query, key, value, cos, sin, positions, k_cache, v_cache, slots - 100)
    before = k_cache.clone()
    for name, bad in cases.items():
        with pytest.raises(ValueError, match=name):
            rope_write_kv(*bad)
    assert torch.equal(k_cache, before)


# ------------------------------------------------------------------ SwiGLU's gating
# (rows, columns): one element, primes, two column blocks and one more, Qwen2.5-0.5B's intermediate size
SWIGLU_SHAPES = [(1, 1), (5, 131), (3, 2049), (2, 4864)]


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("fused_gate_up", [False, True], ids=["separate", "fused_gate_up_views"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SWIGLU_SHAPES, ids=str)
def test_triton_silu_mul_matches_torch(shape, dtype, fused_gate_up):
    from effreason.kernels.swiglu import silu_mul
    both = _randn(shape[0], 2 * shape[1], dtype=dtype, seed=5) * 4
    gate, up = both.chunk(2, dim=1)
    if not fused_gate_up:
        gate, up = gate.contiguous(), up.contiguous()
    expected = F.silu(gate).mul_(up)  # the torch path: ``shape.activation(gate).mul_(up)``
    out = silu_mul(gate, up)
    assert out.is_contiguous() and out.shape == gate.shape
    _close(out, expected, dtype, exact=False)


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_silu_mul_rejects_bad_inputs():
    from effreason.kernels.swiglu import silu_mul
    gate = torch.zeros(3, 8)
    with pytest.raises(ValueError, match="gate"):
        silu_mul(gate.long(), gate.long())
    with pytest.raises(ValueError, match="gate"):
        silu_mul(gate[None], gate[None])
    with pytest.raises(ValueError, match="up"):
        silu_mul(gate, gate.half())
    with pytest.raises(ValueError, match="up"):
        silu_mul(gate, torch.zeros(3, 7))
