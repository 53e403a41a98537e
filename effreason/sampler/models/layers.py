"""The decoder layer every supported family shares, and its pieces, over packed tokens and the paged KV cache.

For the hidden states h (N, C) of N packed tokens at positions p (N,), one layer is (Llama, Qwen2, Qwen3):

    x = RMSNorm(h) * input_norm                               RMSNorm(x) = x / sqrt(mean(x^2) + eps)
    q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv           (N, H, D), (N, Hkv, D), (N, Hkv, D)
    q, k = RMSNorm(q) * q_norm, RMSNorm(k) * k_norm           per head, only where the family has them (Qwen3)
    q, k = RoPE(q, p), RoPE(k, p);  K/V cache[slot(p)] = k, v
    h = h + Attention(q, K/V cache) Wo^T + bo                 causal, grouped-query (attention.py)
    x = RMSNorm(h) * post_norm
    h = h + (act(x Wg^T + bg) * (x Wu^T + bu)) Wd^T + bd      SwiGLU MLP (Shazeer 2020), act SiLU for all three

(absent biases are zero), in HF's rounding order. On the CPU in float32 the products, norms and RoPE with
the cache write run as the native ops of ``cpu_decode``. With a GPU decode-attention backend (``triton``,
``flash``) where Triton runs, the small ops run as Triton kernels (``effreason.kernels``): each residual add
fused with the RMSNorm after it, RoPE with the cache write, and SwiGLU's gating; otherwise as torch ops.
The torch code is the reference of both.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from effreason import _backends
from effreason.sampler import attention, cpu_decode
from effreason.sampler.attention import AttentionMetadata

TRITON_BACKENDS = ("flash", "triton")  # the GPU decode-attention backends, whose forwards run the Triton kernels


@dataclasses.dataclass(slots=True)
class Linear:
    """``x W^T + b``: weight (out, in), bias (out,) or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, module: torch.nn.Linear) -> Linear:
        """The current weight and bias of an ``nn.Linear`` (no copy)."""
        return cls(module.weight, module.bias)


@dataclasses.dataclass(slots=True)
class LayerWeights:
    """One decoder layer's weights by name (module docstring); ``q_norm`` / ``k_norm`` (D,) only for QK-Norm."""

    input_norm: torch.Tensor
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    post_norm: torch.Tensor
    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """Every weight tensor of the layer (absent ones left out)."""
        found = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            found += [value.weight, value.bias] if isinstance(value, Linear) else [value]
        return [tensor for tensor in found if tensor is not None]


@dataclasses.dataclass(frozen=True, slots=True)
class LayerShape:
    """Head counts and sizes, the RMSNorm epsilon and the MLP activation of every layer (the HF config's)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    activation: torch.nn.Module  # HF's module for the config's ``hidden_act`` (``ACT2FN``)
    hidden_act: str  # the config's name of it

    @property
    def is_silu(self) -> bool:
        """Whether the MLP's activation is SiLU (HF's names ``silu`` and ``swish``)."""
        return self.hidden_act in ("silu", "swish")

    @property
    def scale(self) -> float:
        """The attention's softmax scale ``1 / sqrt(D)``."""
        return self.head_dim ** -0.5


@dataclasses.dataclass(slots=True)
class Step:
    """What every layer of one forward shares.

    * ``positions`` (N,) int64 and the attention ``meta`` and ``backend`` (``attention.py``).
    * ``cos``, ``sin``: with ``native`` or ``triton`` the (P, D) RoPE tables, which those ops index by position;
      otherwise the positions' rows (N, 1, D).
    * ``native``: run the small native ops (float32 on the CPU); ``native_products``: the native products too
      (``cpu_decode.products_pay``).
    * ``triton``: run the small ops as Triton kernels (``uses_triton``).
    """

    positions: torch.Tensor
    meta: AttentionMetadata
    backend: str
    cos: torch.Tensor
    sin: torch.Tensor
    native: bool
    native_products: bool
    triton: bool


def uses_triton(backend: str, device: torch.device) -> bool:
    """Whether a forward with decode-attention ``backend`` on ``device`` runs its small ops (norms, RoPE and the
    cache write, SwiGLU) and its draw as Triton kernels: with the GPU backends (``TRITON_BACKENDS``) where
    Triton runs (CUDA, or the CPU under ``TRITON_INTERPRET=1``)."""
    return backend in TRITON_BACKENDS and _backends.triton_usable_on(device)


def linear(x: torch.Tensor, layer: Linear, native: bool) -> torch.Tensor:
    """``x W^T + b``: (N, in) -> (N, out), a new tensor."""
    if native:
        return cpu_decode.linear(x, layer.weight, layer.bias)
    return F.linear(x, layer.weight, layer.bias)


def add_linear_(residual: torch.Tensor, x: torch.Tensor, layer: Linear, native: bool) -> torch.Tensor:
    """``residual += x W^T + b`` in place; without a bias the torch path fuses the add into the GEMM (``addmm_``)."""
    if native:
        return cpu_decode.add_linear_(residual, x, layer.weight, layer.bias)
    if layer.bias is None:
        return residual.addmm_(x, layer.weight.t())
    return residual.add_(F.linear(x, layer.weight, layer.bias))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, native: bool, triton: bool = False) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x^2, -1) + eps))`` computed in float32 (Zhang & Sennrich 2019), x (..., C).

    Low precision follows HF's rounding order: normalise in float32, round, then multiply.
    """
    if triton:
        from effreason.kernels.rms_norm import rms_norm as triton_rms_norm
        return triton_rms_norm(x, weight, eps)
    if native:
        return cpu_decode.rms_norm(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_linear_and_norm_(hidden: torch.Tensor, x: torch.Tensor, layer: Linear, norm_weight: torch.Tensor,
                         eps: float, step: Step) -> torch.Tensor:
    """The residual add and the RMSNorm after it: ``hidden += x W^T + b`` in place, then
    ``rms_norm(hidden, norm_weight)``, returned. On the Triton path the add runs inside the norm's kernel."""
    if step.triton:
        from effreason.kernels.rms_norm import rms_norm as triton_rms_norm
        return triton_rms_norm(hidden, norm_weight, eps, delta=linear(x, layer, False))
    add_linear_(hidden, x, layer, step.native_products)
    return rms_norm(hidden, norm_weight, eps, step.native)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, shape: LayerShape, triton: bool) -> torch.Tensor:
    """SwiGLU's gating ``act(gate) * up`` (N, intermediate), ``up`` overwritten on the torch path; SiLU's as one
    Triton kernel with ``triton``."""
    if triton and shape.is_silu:
        from effreason.kernels.swiglu import silu_mul
        return silu_mul(gate, up)
    return shape.activation(gate).mul_(up)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, half-split convention (Su et al. 2021; HF ``rotate_half``): x (N, heads, D), cos/sin (N, 1, D).

    ``x * cos + cat(-x2, x1) * sin`` with ``x = cat(x1, x2)``, written half by half into one new tensor.
    """
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    out = x * cos
    out[..., :half].addcmul_(second, sin[..., :half], value=-1)
    out[..., half:].addcmul_(first, sin[..., half:])
    return out


def rope_and_cache(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of query (N, H, D) and key (N, Hkv, D) at ``step.positions``, key and value stored in the caches
    at ``step.meta.slot_mapping``; returns the rotated query and key."""
    if step.triton:
        from effreason.kernels.rope_write_kv import rope_write_kv
        rope_write_kv(query, key, value, step.cos, step.sin, step.positions, k_cache, v_cache, step.meta.slot_mapping)
        return query, key
    if step.native:
        cpu_decode.rope_write_kv(query, key, value, step.cos, step.sin, step.positions, k_cache, v_cache,
                                 step.meta.slot_mapping)
        return query, key
    query, key = rotate(query, step.cos, step.sin), rotate(key, step.cos, step.sin)
    attention.write_kv(k_cache, v_cache, key, value, step.meta.slot_mapping)
    return query, key


def decoder_layer(weights: LayerWeights, hidden: torch.Tensor, x: torch.Tensor, next_norm: torch.Tensor,
                  layer_cache: torch.Tensor, step: Step, shape: LayerShape) -> torch.Tensor:
    """One decoder layer (module docstring) over ``hidden`` (N, C), a tensor this forward owns, updated in place;
    ``x`` (N, C) is ``RMSNorm(hidden) * input_norm``, the previous layer's last result.

    Returns ``RMSNorm(hidden) * next_norm`` of the updated ``hidden``: the next layer's input (its
    ``input_norm``) or the final norm's output, so every residual add is followed by its norm.
    ``layer_cache`` (2, num_blocks, Hkv, block_size, D) receives the tokens' K and V.
    """
    num_tokens, native, products, triton = hidden.shape[0], step.native, step.native_products, step.triton
    query = linear(x, weights.q_proj, products).view(num_tokens, shape.num_heads, shape.head_dim)
    key = linear(x, weights.k_proj, products).view(num_tokens, shape.num_kv_heads, shape.head_dim)
    value = linear(x, weights.v_proj, products).view(num_tokens, shape.num_kv_heads, shape.head_dim)
    if weights.q_norm is not None:
        query = rms_norm(query, weights.q_norm, shape.eps, native, triton)
        key = rms_norm(key, weights.k_norm, shape.eps, native, triton)
    k_cache, v_cache = layer_cache[0], layer_cache[1]
    query, key = rope_and_cache(query, key, value, k_cache, v_cache, step)
    if step.meta.is_prefill:
        attended = attention.prefill_attention(query, key, value, k_cache, v_cache, step.meta, shape.scale)
    else:
        attended = attention.decode_attention(step.backend, query, k_cache, v_cache, step.meta, shape.scale)
    x = add_linear_and_norm_(hidden, attended.reshape(num_tokens, -1), weights.o_proj, weights.post_norm,
                             shape.eps, step)
    gated = gated_activation(linear(x, weights.gate_proj, products), linear(x, weights.up_proj, products),
                             shape, triton)  # (N, intermediate)
    return add_linear_and_norm_(hidden, gated, weights.down_proj, next_norm, shape.eps, step)
