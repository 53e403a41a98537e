"""The native CPU decode ops (``csrc/cpu_decode``), float32 on the CPU: what keeps the CPU sampler fast.

At decode sizes (a few hundred rows) a chain of small torch ops costs more in per-op overhead and
(N, C) temporaries than in arithmetic, and a packing GEMM waits for weights that come from L3 or DRAM;
each op here does its job in one parallel pass over rows:

* ``linear(x, W, b) = x W^T + b`` and ``add_linear_(h, x, W, b)``: ``h += x W^T + b``, each thread an
  AVX-512 product of its rows with the whole weight in its own (N, K) layout (ATen's GEMM without AVX-512);
* ``rms_norm(x, weight, eps) = weight * (x * rsqrt(mean(x^2) + eps))``;
* ``rope_write_kv``: RoPE of query and key in place, then key and value into their cache slots;
* ``gumbel_argmax``: the Gumbel-max draw of ``sampling.gumbel_argmax`` (same uniforms, logs within ~1 ulp);
* ``gumbel_sample``: log-softmax of raw logits and that draw in one pass, with the drawn token's log-prob.

The torch code they replace (``models/layers.py``, ``sampling.py``) is the reference and runs everywhere
else: CUDA, bf16/fp16 on the CPU, or no native build. The decode attention's native CPU op is
``attention.py``'s ``native`` backend (``csrc/paged_attention``).
"""

from __future__ import annotations

import functools

import torch

from effreason import _backends

# Every thread runs the native products on its own rows against the whole weight: that pays while the model's
# weights stay in the last-level cache, or while each thread has enough rows for its products to be
# compute-bound; otherwise ATen's multithreaded GEMM, which splits each weight over the threads, reads it once.
CACHED_WEIGHT_BYTES = 32 << 20
MIN_ROWS_PER_THREAD = 64


@functools.lru_cache(maxsize=None)
def _has_ops() -> bool:
    return _backends.has_native() and hasattr(torch.ops.effreason, "add_linear_")  # the newest op of the build


def usable(tensor: torch.Tensor) -> bool:
    """True when the native ops can take ``tensor``: float32 on the CPU, native extension built."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and _has_ops()


def products_pay(weight_bytes: int, num_rows: int) -> bool:
    """Whether ``linear`` / ``add_linear_`` beat ATen's GEMM for a model of ``weight_bytes`` at ``num_rows`` rows:
    its weights fit the last-level cache, or every thread has ``MIN_ROWS_PER_THREAD`` rows."""
    return weight_bytes <= CACHED_WEIGHT_BYTES or num_rows >= MIN_ROWS_PER_THREAD * torch.get_num_threads()


if _has_ops():
    @torch.library.register_fake("effreason::linear")
    def _linear_fake(x, weight, bias=None):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("effreason::add_linear_")
    def _add_linear_fake(residual, x, weight, bias=None):
        return None

    @torch.library.register_fake("effreason::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        return x.new_empty(x.shape)  # contiguous, like the op's output

    @torch.library.register_fake("effreason::rope_write_kv")
    def _rope_write_kv_fake(query, key, value, cos_table, sin_table, positions, k_cache, v_cache, slot_mapping):
        return None

    @torch.library.register_fake("effreason::gumbel_argmax")
    def _gumbel_argmax_fake(log_probs, keys, steps):
        return log_probs.new_empty(log_probs.shape[0], dtype=torch.int64)

    @torch.library.register_fake("effreason::gumbel_sample")
    def _gumbel_sample_fake(logits, keys, steps):
        return logits.new_empty(logits.shape[0], dtype=torch.int64), logits.new_empty(logits.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` of rows x (M, K), weight (N, K), bias (N,) or None: (M, N), a new tensor."""
    return torch.ops.effreason.linear(x, weight, bias)


def add_linear_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``residual += x W^T + b`` in place, residual (M, N) with contiguous rows; returns ``residual``."""
    torch.ops.effreason.add_linear_(residual, x, weight, bias)
    return residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x^2, -1) + eps))`` of rows x (N, C)."""
    return torch.ops.effreason.rms_norm(x, weight, eps)


def rope_write_kv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cos_table: torch.Tensor,
                  sin_table: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Rotate query (N, H, D) and key (N, Hkv, D) in place by RoPE at ``positions`` (rows of the (P, D)
    tables), then store key and value at ``slot_mapping`` (distinct ``block * block_size + row``) of the caches.

    Positions and slots are checked before anything is written.
    """
    torch.ops.effreason.rope_write_kv(query, key, value, cos_table, sin_table, positions, k_cache, v_cache,
                                      slot_mapping)


def gumbel_argmax(log_probs: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``argmax_v(log_probs[b, v] - log(-log U[b, v]))``, ``U = sampling.uniform_noise(keys, steps, V)``: (B,)."""
    return torch.ops.effreason.gumbel_argmax(log_probs, keys, steps)


def gumbel_sample(logits: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, log_probs)`` (B,): ``gumbel_argmax(log_softmax(logits), keys, steps)`` and each drawn token's
    ``log_softmax(logits)`` (within ~1 ulp of torch's), one pass over each row of ``logits`` (B, V)."""
    return torch.ops.effreason.gumbel_sample(logits, keys, steps)
