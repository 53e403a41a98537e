"""Paged forward pass of a Hugging Face Qwen2 / Llama causal LM, on the model's own parameters.

Same math as ``transformers``' ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` (RMSNorm, RoPE with the
config's scaling, grouped-query attention, SwiGLU MLP, optional q/k/v/o and MLP biases, tied or
untied embeddings), but over packed tokens with the KV cache of ``attention.py``. Weights are read
from the HF modules at every call (no copy), so an optimizer step is seen by the next forward.

The layers run op by op (``_layer``; on the CPU in float32 the small ops are ``fused_cpu``'s native
ones), except a CPU float32 decode step, which runs whole in ``fused_cpu.decode_layers`` when
``fused_decode`` says so: each thread takes its own rows through every layer and the LM head. A whole
decode round (several steps with the draw of each next token) can run in ``fused_cpu.decode_round``
(``decode_round``, where ``fused_round`` says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effreason.sampler import attention, fused_cpu
from effreason.sampler.attention import AttentionMetadata

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
# ``fused_cpu.decode_layers`` gives each thread its own rows, so every thread reads all layer and LM head weights.
# That pays while the weights stay in the last-level cache, or while each thread has enough rows for its
# products to stay compute-bound; otherwise one multithreaded product per layer (MKL splits the weights)
# reads them once. Thresholds chosen, not measured beyond the 2-core CI VM (bench/RESULTS.md).
FUSED_DECODE_CACHED_WEIGHT_BYTES = 32 << 20
FUSED_DECODE_MIN_ROWS_PER_THREAD = 64


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _add_linear_(residual: torch.Tensor, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``residual += x W^T (+ b)`` in place; without a bias the add is fused into the GEMM (``addmm_``)."""
    if layer.bias is None:
        return residual.addmm_(x, layer.weight.t())
    return residual.add_(_linear(x, layer))


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x^2) + eps))`` computed in float32 (Zhang & Sennrich 2019).

    Low precision follows HF's rounding order: normalise in float32, round, then multiply.
    """
    if fused_cpu.usable(x):
        return fused_cpu.rms_norm(x, norm.weight, eps)
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, half-split convention (Su et al. 2021; HF ``rotate_half``): x (N, heads, D), cos/sin (N, 1, D).

    ``x * cos + cat(-x2, x1) * sin`` with ``x = cat(x1, x2)``, written half by half into one new tensor.
    """
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    out = x * cos
    out[..., :half].addcmul_(second, sin[..., :half], value=-1)
    out[..., half:].addcmul_(first, sin[..., half:])
    return out


def _swiglu(gate: torch.Tensor, up: torch.Tensor, mlp: torch.nn.Module, act: str) -> torch.Tensor:
    """``act(gate) * up``, into ``gate`` (both fresh projections this forward owns)."""
    if act == "silu" and fused_cpu.usable(gate):
        return fused_cpu.silu_mul_(gate, up)
    return mlp.act_fn(gate).mul_(up)


class PagedModel:
    """Wraps an HF causal LM; ``forward`` runs it over packed tokens with a paged KV cache."""

    def __init__(self, hf_model: torch.nn.Module):
        config = getattr(hf_model, "config", None)
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model must be a Hugging Face causal LM of type {SUPPORTED_MODEL_TYPES}, "
                             f"got {getattr(config, 'model_type', type(hf_model).__name__)!r}")
        window = getattr(config, "sliding_window", None)
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()) and window is not None \
                and window < config.max_position_embeddings:
            raise ValueError(f"sliding-window attention (window {window} < context "
                             f"{config.max_position_embeddings}) is not supported by the paged sampler")
        self.hf_model = hf_model
        self.decoder = hf_model.model
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.hidden_act = config.hidden_act
        self.max_model_len = config.max_position_embeddings
        self.scale = self.head_dim ** -0.5
        self._rope_key = None
        self._rope_tables = None
        # (owner's parameter dict, name) of every parameter: reading the dicts sees replaced parameters
        # and takes 34 us for 24 layers, where ``hf_model.parameters()`` walks the module tree (460 us)
        self._parameter_slots = [(module._parameters, name) for module in hf_model.modules()
                                 for name, param in module._parameters.items() if param is not None]
        self._decode_weight_slots = self._layer_weight_slots()
        head = hf_model.lm_head
        # the fused decode op computes the logits too when the LM head is a plain x W^T
        self._lm_head_slot = (head._parameters, "weight") if getattr(head, "bias", None) is None else None
        self._decode_weight_bytes = sum(params[name].nbytes for params, name in self._decode_weight_slots
                                        if params[name] is not None) + head.weight.nbytes

    def _layer_weight_slots(self) -> list[tuple[dict, str]]:
        """(owner's parameter dict, name) of each entry of ``fused_cpu.decode_layers``' weight list but the
        last (the LM head)."""
        slots = []
        for layer in self.decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            slots.append((layer.input_layernorm._parameters, "weight"))
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
                slots += [(linear._parameters, "weight"), (linear._parameters, "bias")]
            slots.append((layer.post_attention_layernorm._parameters, "weight"))
            for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                slots += [(linear._parameters, "weight"), (linear._parameters, "bias")]
        return slots + [(self.decoder.norm._parameters, "weight")]

    def parameters(self) -> list[torch.Tensor]:
        """The model's current parameters (a tied one once per owner), cheap enough for every decode step."""
        return [params[name] for params, name in self._parameter_slots]

    def weights_version(self) -> tuple | None:
        """Changes whenever a parameter is updated in place (optimizer step, ``load_state_dict``) or replaced.

        None when a parameter is an inference tensor, which keeps no version counter: unknowable.
        """
        params = self.parameters()
        if any(p.is_inference() for p in params):
            return None
        return tuple((p.data_ptr(), p._version) for p in params)

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def rope_tables(self, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions ``0 .. P-1`` (P >= num_positions), each (P, D), from the model's rotary module.

        The module applies the config's rope scaling (linear, NTK, YaRN, llama3, ...) and its
        attention scaling, so every rope type HF supports comes out as HF computes it (dynamic
        NTK is evaluated once for the table length). Cached; regrown by doubling when needed.
        """
        key = (self.device, self.dtype)
        if self._rope_key != key or self._rope_tables[0].shape[0] < num_positions:
            length = min(self.max_model_len, max(1024, 1 << (num_positions - 1).bit_length()))
            positions = torch.arange(length, device=self.device)[None]  # (1, P)
            probe = torch.empty(0, device=self.device, dtype=self.dtype)
            cos, sin = self.decoder.rotary_emb(probe, positions)
            self._rope_tables = (cos[0].contiguous(), sin[0].contiguous())
            self._rope_key = key
        return self._rope_tables

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, backend: str, *, logits: bool = False) -> torch.Tensor:
        """Final hidden states (N, hidden) of packed tokens ``input_ids`` (N,) at ``positions`` (N,), or with
        ``logits`` their float32 next-token logits (N, vocab).

        Call ``rope_tables`` with the largest position + 1 first.

        ``kv_cache`` (layers, 2, num_blocks, Hkv, block_size, D) receives every token's K and V.
        """
        hidden = F.embedding(input_ids, self.decoder.embed_tokens.weight)  # (N, hidden)
        if not meta.is_prefill and self.fused_decode(hidden.shape[0], backend):
            head = self._lm_head_slot if logits else None
            out = fused_cpu.decode_layers(hidden, self._decode_weights(head), *self._rope_tables, positions, kv_cache,
                                          meta.slot_mapping, meta.block_tables, meta.context_lens, self.num_heads,
                                          self.eps, self.scale)
            return self.logits(out) if logits and head is None else out
        # the torch RoPE path gathers each position's cos/sin once for all layers; the fused op reads the tables
        cos_sin = None if fused_cpu.usable(hidden) else \
            tuple(table.index_select(0, positions)[:, None] for table in self._rope_tables)  # (N, 1, D) each
        for index, layer in enumerate(self.decoder.layers):
            hidden = self._layer(layer, hidden, positions, cos_sin, kv_cache[index], meta, backend)
        hidden = _rms_norm(hidden, self.decoder.norm, self.eps)
        return self.logits(hidden) if logits else hidden

    def fused_decode(self, num_rows: int, backend: str) -> bool:
        """Whether a decode step of ``num_rows`` rows runs as one ``fused_cpu.decode_layers`` call: float32 on the
        CPU with the native attention and a SiLU MLP, weights that fit the cache or enough rows per thread."""
        if backend != "native" or self.hidden_act != "silu" or not fused_cpu.usable(self.decoder.embed_tokens.weight):
            return False
        return (self._decode_weight_bytes <= FUSED_DECODE_CACHED_WEIGHT_BYTES
                or num_rows >= FUSED_DECODE_MIN_ROWS_PER_THREAD * torch.get_num_threads())

    def fused_round(self, num_rows: int, backend: str) -> bool:
        """Whether ``decode_round`` can run: a fused decode step whose LM head (no bias) folds in."""
        return self._lm_head_slot is not None and self.fused_decode(num_rows, backend)

    def decode_round(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                     slot_mapping: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     keys: torch.Tensor, steps: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``S = positions.shape[0]`` decode steps of ``input_ids`` (B,) in one ``fused_cpu.decode_round`` call,
        each step's drawn tokens the next step's input: positions, slots, context lengths (S, B).

        Tokens are drawn untruncated as ``sampling.sample`` draws them (``temperature`` 0: greedy), row ``b``
        at step ``s`` with stream ``(keys[b], steps[b] + s)``. Returns tokens, log-probs and trainer log-probs,
        each (B, S). Only where ``fused_round`` says so; call ``rope_tables`` with the largest position + 1 first.
        """
        return fused_cpu.decode_round(input_ids, self.decoder.embed_tokens.weight,
                                      self._decode_weights(self._lm_head_slot), *self._rope_tables, positions,
                                      kv_cache, slot_mapping, block_tables, context_lens, keys, steps, self.num_heads,
                                      self.eps, self.scale, temperature)

    def _decode_weights(self, lm_head_slot: tuple[dict, str] | None) -> list[torch.Tensor | None]:
        """The fused ops' weight list: every layer's current tensors (no copy), the final norm, the LM head or None."""
        weights = [params.get(name) for params, name in self._decode_weight_slots]
        weights.append(lm_head_slot[0][lm_head_slot[1]] if lm_head_slot else None)
        return weights

    def _rope_and_cache(self, query, key, value, positions, cos_sin, k_cache, v_cache, meta):
        """RoPE of query (N, H, D) and key (N, Hkv, D) at ``positions``, key and value stored in the
        cache at ``meta.slot_mapping``; returns the rotated query and key.

        ``cos_sin``: the positions' (N, 1, D) cos and sin rows for the torch path, None for the fused op.
        """
        if cos_sin is None:
            fused_cpu.rope_write_kv(query, key, value, *self._rope_tables, positions, k_cache, v_cache,
                                    meta.slot_mapping)
            return query, key
        cos, sin = cos_sin
        query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
        attention.write_kv(k_cache, v_cache, key, value, meta.slot_mapping)
        return query, key

    def _layer(self, layer, hidden, positions, cos_sin, layer_cache, meta, backend):
        """One decoder layer; updates ``hidden`` (N, hidden), a tensor this forward owns, in place."""
        num_tokens = hidden.shape[0]
        attn = layer.self_attn
        x = _rms_norm(hidden, layer.input_layernorm, self.eps)
        query = _linear(x, attn.q_proj).view(num_tokens, self.num_heads, self.head_dim)
        key = _linear(x, attn.k_proj).view(num_tokens, self.num_kv_heads, self.head_dim)
        value = _linear(x, attn.v_proj).view(num_tokens, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = layer_cache[0], layer_cache[1]
        query, key = self._rope_and_cache(query, key, value, positions, cos_sin, k_cache, v_cache, meta)
        if meta.is_prefill:
            attended = attention.prefill_attention(query, key, value, k_cache, v_cache, meta, self.scale)
        else:
            attended = attention.decode_attention(backend, query, k_cache, v_cache, meta, self.scale)
        _add_linear_(hidden, attended.reshape(num_tokens, -1), attn.o_proj)
        x = _rms_norm(hidden, layer.post_attention_layernorm, self.eps)
        mlp = layer.mlp
        gated = _swiglu(_linear(x, mlp.gate_proj), _linear(x, mlp.up_proj), mlp, self.hidden_act)  # (N, inter)
        return _add_linear_(hidden, gated, mlp.down_proj)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 next-token logits (N, vocab) of final hidden states (N, hidden)."""
        return _linear(hidden, self.hf_model.lm_head).float()
