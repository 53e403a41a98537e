"""Native CPU fusions of the decode step's small ops (``csrc/decode_step``), float32 on the CPU.

At decode sizes (a few hundred rows) a chain of small torch ops costs more in per-op overhead and
(N, C) temporaries than in arithmetic; each op here does its chain in one parallel pass:

* ``rms_norm(x, weight, eps) = weight * (x * rsqrt(mean(x^2) + eps))``;
* ``silu_mul_(gate, up)``: ``gate <- silu(gate) * up`` (SwiGLU);
* ``rope_write_kv``: RoPE of query and key in place, then key and value into their cache slots;
* ``gumbel_argmax``: the Gumbel-max draw of ``sampling.gumbel_argmax`` (same uniforms, logs within ~1 ulp);
* ``gumbel_sample``: log-softmax of raw logits and that draw in one pass, with the drawn token's log-prob;
* ``linear``: ``F.linear`` (+ a residual) with the AVX-512 product of ``csrc/linear`` (ATen's GEMM without AVX-512),
  the product ``decode_layers`` runs on each thread's rows;
* ``decode_layers``: every decoder layer of a decode step, the final norm and the LM head in one op, each thread
  running all layers on its own range of rows (``csrc/decode_step/decode_layers.cpp``);
* ``decode_round``: several decode steps in one op, each thread taking its rows through every step, the
  next token drawn in the op (greedy or untruncated ``gumbel_sample``) and fed to the next step.

The torch code they replace (``model.py``, ``attention.py``, ``sampling.py``) is the reference and
runs everywhere else: CUDA, bf16/fp16 on the CPU, or no native build.
"""

from __future__ import annotations

import functools

import torch

from effreason import _backends


@functools.lru_cache(maxsize=None)
def _has_ops() -> bool:
    return _backends.has_native() and hasattr(torch.ops.effreason, "decode_round")  # the newest op of the build


def usable(tensor: torch.Tensor) -> bool:
    """True when the fused ops can take ``tensor``: float32 on the CPU, native extension built."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and _has_ops()


if _has_ops():
    @torch.library.register_fake("effreason::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        return x.new_empty(x.shape)  # contiguous, like the op's output

    @torch.library.register_fake("effreason::silu_mul_")
    def _silu_mul_fake(gate, up):
        return None

    @torch.library.register_fake("effreason::rope_write_kv")
    def _rope_write_kv_fake(query, key, value, cos_table, sin_table, positions, k_cache, v_cache, slot_mapping):
        return None

    @torch.library.register_fake("effreason::decode_layers")
    def _decode_layers_fake(hidden, weights, cos_table, sin_table, positions, kv_cache, slot_mapping, block_tables,
                            context_lens, num_heads, eps, scale):
        lm_head = weights[-1]
        return hidden.new_empty(hidden.shape if lm_head is None else (hidden.shape[0], lm_head.shape[0]))

    @torch.library.register_fake("effreason::linear")
    def _linear_fake(x, weight, bias, residual):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("effreason::decode_round")
    def _decode_round_fake(input_ids, embedding, weights, cos_table, sin_table, positions, kv_cache, slot_mapping,
                           block_tables, context_lens, keys, steps, num_heads, eps, scale, temperature):
        shape = (input_ids.shape[0], positions.shape[0])
        return input_ids.new_empty(shape), embedding.new_empty(shape), embedding.new_empty(shape)

    @torch.library.register_fake("effreason::gumbel_argmax")
    def _gumbel_argmax_fake(log_probs, keys, steps):
        return log_probs.new_empty(log_probs.shape[0], dtype=torch.int64)

    @torch.library.register_fake("effreason::gumbel_sample")
    def _gumbel_sample_fake(logits, keys, steps):
        return logits.new_empty(logits.shape[0], dtype=torch.int64), logits.new_empty(logits.shape[0])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x^2, -1) + eps))`` of rows x (N, C)."""
    return torch.ops.effreason.rms_norm(x, weight, eps)


def silu_mul_(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``gate <- silu(gate) * up`` in place (contiguous, one shape); returns ``gate``."""
    torch.ops.effreason.silu_mul_(gate, up)
    return gate


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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (+ ``residual``) of rows x (M, K), weight (N, K): (M, N), a new tensor."""
    return torch.ops.effreason.linear(x, weight, bias, residual)


def decode_layers(hidden: torch.Tensor, weights: list[torch.Tensor | None], cos_table: torch.Tensor,
                  sin_table: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                  block_tables: torch.Tensor, context_lens: torch.Tensor, num_heads: int, eps: float,
                  scale: float) -> torch.Tensor:
    """Final hidden states (N, C) of a decode step from its token embeddings ``hidden`` (N, C), or their
    next-token logits (N, V) when the LM head is given.

    Runs every layer of ``PagedModel._layer`` (SiLU MLP, paged attention over ``block_tables`` /
    ``context_lens``, K/V written at ``slot_mapping`` of ``kv_cache`` (layers, 2, blocks, Hkv, bs, D)),
    the final RMSNorm and the LM head. ``weights``: per layer input norm, q/k/v/o weight and bias,
    post-attention norm, gate/up/down weight and bias (None for an absent bias), then the final norm
    weight and the LM head weight (V, C) (None: return the hidden states).
    """
    return torch.ops.effreason.decode_layers(hidden, weights, cos_table, sin_table, positions, kv_cache, slot_mapping,
                                             block_tables, context_lens, num_heads, eps, scale)


def decode_round(input_ids: torch.Tensor, embedding: torch.Tensor, weights: list[torch.Tensor | None],
                 cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, keys: torch.Tensor,
                 steps: torch.Tensor, num_heads: int, eps: float, scale: float,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``S`` decode steps of ``input_ids`` (B,) int64, each drawing the next step's input; returns ``(tokens,
    logprobs, trainer_logprobs)``, each (B, S).

    Step ``s`` is ``decode_layers`` of ``embedding[tokens]`` at ``positions[s]``, ``slot_mapping[s]``,
    ``context_lens[s]`` (all (S, B)) with the LM head (``weights[-1]``, required), then the draw of
    ``sampling.sample`` without top-k / top-p: ``temperature`` 0 is greedy (log-prob 0, trainer log-prob
    ``log_softmax(logits)[token]``), otherwise ``gumbel_sample(logits / temperature, keys, steps + s)``.
    """
    return torch.ops.effreason.decode_round(input_ids, embedding, weights, cos_table, sin_table, positions, kv_cache,
                                            slot_mapping, block_tables, context_lens, keys, steps, num_heads, eps,
                                            scale, temperature)
