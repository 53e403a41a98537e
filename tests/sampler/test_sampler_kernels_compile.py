"""The sampler's Triton kernels compile for the GPU (sm_90), here without one: nothing runs.

The interpreter (TRITON_INTERPRET=1, how the other tests run these kernels on the CPU) executes them as
numpy and accepts programs Triton's compiler refuses: a loop-carried value that changes type, a dot under
16 x 16, a cast the backend lacks. Here each launcher is called with CPU tensors while its kernel is swapped
for a stand-in that compiles the launch (the launcher's own arguments, constexprs and warps) through
Triton's compiler to a cubin (Triton ships ``ptxas``), so a kernel that would not build on the GPU fails
on the CPU.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from effreason import _backends

TARGET_ARCH = 90  # H100 / H200
SCALAR_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
                torch.int64: "i64"}

pytestmark = pytest.mark.skipif(not _backends.has_triton() or _backends.triton_interpreted() or torch.cuda.is_available(),
                                reason="needs Triton's compiler, not the interpreter; on a GPU the kernels compile and run "
                                       "in the other tests")


class CompileOnly:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` compiles, records, launches nothing."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = []

    def __getitem__(self, grid):
        return self.compile

    def compile(self, *args, **kwargs):
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        options = {name: kwargs.pop(name) for name in ("num_warps", "num_stages") if name in kwargs}
        values = dict(zip(self.kernel.arg_names, args), **kwargs)
        signature, constexprs = {}, {}
        for param in self.kernel.params:
            value = values[param.name]
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = "*" + SCALAR_TYPES[value.dtype]
            elif isinstance(value, float):
                signature[param.name] = "fp32"
            else:
                signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        source = ASTSource(fn=self.kernel, signature=signature, constexprs=constexprs)
        self.compiled.append(triton.compile(source, target=GPUTarget("cuda", TARGET_ARCH, 32), options=options))


def _compile_launches(monkeypatch, module_name: str, kernel_names: list[str], launch) -> list:
    module = importlib.import_module(f"effreason.kernels.{module_name}")
    stand_ins = {name: CompileOnly(getattr(module, name)) for name in kernel_names}
    for name, stand_in in stand_ins.items():
        monkeypatch.setattr(module, name, stand_in)
    launch(module)
    return [kernel for stand_in in stand_ins.values() for kernel in stand_in.compiled]


def _paged_inputs(dtype):
    num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks = 3, 14, 2, 64, 16, 40
    query = torch.randn(num_seqs, num_heads, head_dim, dtype=dtype)
    k_cache, v_cache = (torch.randn(num_seqs * max_blocks, num_kv_heads, block_size, head_dim, dtype=dtype)
                        for _ in range(2))
    tables = torch.arange(num_seqs * max_blocks, dtype=torch.int32).view(num_seqs, max_blocks)
    return query, k_cache, v_cache, tables, torch.tensor([1, 300, 640], dtype=torch.int32)


def _rope_inputs(dtype):
    num_tokens, num_heads, num_kv_heads, head_dim, block_size = 4, 14, 2, 64, 16
    query = torch.randn(num_tokens, num_heads, head_dim, dtype=dtype)
    key, value = (torch.randn(num_tokens, num_kv_heads, head_dim, dtype=dtype) for _ in range(2))
    cos, sin = (torch.randn(32, head_dim, dtype=dtype) for _ in range(2))
    caches = [torch.zeros(8, num_kv_heads, block_size, head_dim, dtype=dtype) for _ in range(2)]
    positions, slots = torch.arange(num_tokens), torch.arange(num_tokens) * 3
    return query, key, value, cos, sin, positions, caches[0], caches[1], slots


def _prefill_inputs(dtype):
    query, k_cache, v_cache, tables, lens = _paged_inputs(dtype)
    packed = torch.randn(45, query.shape[1], query.shape[2], dtype=dtype)  # 1, 20 and 24 new tokens
    return (packed, k_cache, v_cache, tables, torch.tensor([0, 1, 21, 45], dtype=torch.int32), lens, 24)


def _streams(rows):
    return torch.arange(rows), torch.zeros(rows, dtype=torch.int64)


LAUNCHES = {
    "rms_norm": ("rms_norm", ["_add_rms_norm_kernel"], lambda m: (
        m.rms_norm(torch.randn(4, 896, dtype=torch.bfloat16), torch.ones(896, dtype=torch.bfloat16), 1e-6,
                   delta=torch.randn(4, 896, dtype=torch.bfloat16)),
        m.rms_norm(torch.randn(4, 2, 64), torch.ones(64), 1e-6))),
    "rope_write_kv": ("rope_write_kv", ["_rope_write_kv_kernel"], lambda m: (
        m.rope_write_kv(*_rope_inputs(torch.bfloat16)), m.rope_write_kv(*_rope_inputs(torch.float32)))),
    "silu_mul": ("swiglu", ["_silu_mul_kernel"], lambda m: m.silu_mul(
        torch.randn(4, 4864, dtype=torch.bfloat16), torch.randn(4, 4864, dtype=torch.bfloat16))),
    "paged_attention": ("paged_attention", ["_paged_decode_fwd_kernel", "_paged_decode_reduce_kernel"], lambda m: (
        m.paged_attention_decode(*_paged_inputs(torch.bfloat16), 0.125, num_splits=1),
        m.paged_attention_decode(*_paged_inputs(torch.bfloat16), 0.125, num_splits=5),
        m.paged_attention_decode(*_paged_inputs(torch.float32), 0.125, num_splits=1))),
    "paged_prefill": ("paged_prefill", ["_paged_prefill_kernel"], lambda m: (
        m.paged_prefill_attention(*_prefill_inputs(torch.bfloat16), 0.125),
        m.paged_prefill_attention(*_prefill_inputs(torch.float32), 0.125))),
    "gumbel_sampling": ("gumbel_sampling", ["_sample_kernel"], lambda m: (
        m.gumbel_sample(torch.randn(4, 151936, dtype=torch.bfloat16), *_streams(4), 0.7),
        m.greedy_sample(torch.randn(4, 151936, dtype=torch.bfloat16)),
        m.gumbel_argmax(torch.randn(4, 1000), *_streams(4)))),
}


@pytest.mark.parametrize("name", sorted(LAUNCHES))
def test_kernel_compiles_for_the_gpu(name, monkeypatch):
    module_name, kernel_names, launch = LAUNCHES[name]
    compiled = _compile_launches(monkeypatch, module_name, kernel_names, launch)
    assert compiled and all(kernel.asm["cubin"] for kernel in compiled)
