"""Paged forward pass of a Hugging Face causal LM on the model's own parameters: embedding, the shared decoder
layer of ``layers.py`` once per layer, the final RMSNorm and the LM head, over packed tokens and the KV cache.

Same math as ``transformers``' model of the family (RoPE with the config's scaling, grouped-query attention,
SwiGLU MLP, optional biases and QK-Norm, tied or untied embeddings). The weights are the HF modules' own
tensors (no copy), read by the family's ``layer_weights`` at ``bind_weights``: an optimizer step updates them
in place, and a parameter replaced since (reassigned, or swapped by FSDP2's unshard) is picked up by the next
``bind_weights``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from effreason.sampler import cpu_decode
from effreason.sampler.attention import AttentionMetadata
from effreason.sampler.models.layers import (LayerShape, LayerWeights, Linear, Step, decoder_layer, rms_norm,
                                             uses_triton)

MIN_ROPE_TABLE = 1024  # positions of the first RoPE table; it grows by doubling


class PagedModel:
    """An HF causal LM (``model.embed_tokens``, ``model.layers``, ``model.norm``, ``model.rotary_emb``,
    ``lm_head``) whose decoder layers ``layer_weights`` reads; ``forward`` runs it with a paged KV cache."""

    def __init__(self, hf_model: torch.nn.Module, layer_weights: Callable[[torch.nn.Module], LayerWeights]):
        config = hf_model.config
        window = getattr(config, "sliding_window", None)
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()) and window is not None \
                and window < config.max_position_embeddings:
            raise ValueError(f"sliding-window attention (window {window} < context "
                             f"{config.max_position_embeddings}) is not supported by the paged sampler")
        self.hf_model = hf_model
        self.decoder = hf_model.model
        self.layer_weights = layer_weights
        self.num_layers = config.num_hidden_layers
        self.vocab_size = config.vocab_size
        self.max_model_len = config.max_position_embeddings
        num_heads = config.num_attention_heads
        self.shape = LayerShape(
            num_heads=num_heads, num_kv_heads=config.num_key_value_heads or num_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // num_heads,
            eps=config.rms_norm_eps, activation=ACT2FN[config.hidden_act], hidden_act=config.hidden_act)
        self.layers: list[LayerWeights] = []
        self.final_norm: torch.Tensor | None = None
        self.lm_head: Linear | None = None
        self.weight_bytes = 0  # what a decode step reads: every layer, the final norm, the LM head
        self._rope_key = None
        self._rope_tables = None

    @property
    def num_kv_heads(self) -> int:
        return self.shape.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.shape.head_dim

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    @property
    def embedding(self) -> torch.Tensor:
        return self.decoder.embed_tokens.weight

    def bind_weights(self) -> None:
        """Read the current weights of every layer and the LM head from the HF modules (no copy)."""
        self.layers = [self.layer_weights(layer) for layer in self.decoder.layers]
        self.final_norm = self.decoder.norm.weight
        self.lm_head = Linear.of(self.hf_model.lm_head)
        self.weight_bytes = sum(tensor.nbytes for tensor in self.weights()[1:])

    def unbind_weights(self) -> None:
        """Forget the bound weights (``bind_weights`` reads them again), so they can be freed."""
        self.layers, self.final_norm, self.lm_head, self.weight_bytes = [], None, None, 0

    def weights(self) -> list[torch.Tensor]:
        """Every bound weight tensor: embedding, layers, final norm, LM head (a tied one twice)."""
        tensors = [self.embedding]
        for layer in self.layers:
            tensors += layer.tensors()
        head = [tensor for tensor in (self.lm_head.weight, self.lm_head.bias) if tensor is not None]
        return tensors + [self.final_norm] + head

    def rope_tables(self, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions ``0 .. P-1`` (P >= num_positions), each (P, D), from the model's rotary module.

        The module applies the config's rope scaling (linear, NTK, YaRN, llama3, ...) and its
        attention scaling, so every rope type HF supports comes out as HF computes it (dynamic
        NTK is evaluated once for the table length). Cached; regrown by doubling when needed.
        """
        key = (self.device, self.dtype)
        if self._rope_key != key or self._rope_tables[0].shape[0] < num_positions:
            length = min(self.max_model_len, max(MIN_ROPE_TABLE, 1 << (num_positions - 1).bit_length()))
            positions = torch.arange(length, device=self.device)[None]  # (1, P)
            probe = torch.empty(0, device=self.device, dtype=self.dtype)
            cos, sin = self.decoder.rotary_emb(probe, positions)
            self._rope_tables = (cos[0].contiguous(), sin[0].contiguous())
            self._rope_key = key
        return self._rope_tables

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, backend: str) -> torch.Tensor:
        """Final hidden states (N, hidden) of packed tokens ``input_ids`` (N,) at ``positions`` (N,).

        Call ``bind_weights`` and ``rope_tables`` (with the largest position + 1) first. ``kv_cache`` (layers, 2,
        num_blocks, Hkv, block_size, D) receives every token's K and V.
        """
        hidden = F.embedding(input_ids, self.embedding)  # (N, hidden)
        step = self._step(hidden, positions, meta, backend)
        x = rms_norm(hidden, self.layers[0].input_norm, self.shape.eps, step.native, step.triton)
        next_norms = [layer.input_norm for layer in self.layers[1:]] + [self.final_norm]
        for layer, layer_cache, next_norm in zip(self.layers, kv_cache, next_norms):
            x = decoder_layer(layer, hidden, x, next_norm, layer_cache, step, self.shape)
        return x

    def _step(self, hidden: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, backend: str) -> Step:
        """The forward's shared state: Triton kernels with a GPU attention backend (``layers.uses_triton``), else the
        native ops on float32 CPU rows, else torch; the (P, D) RoPE tables for the first two (their ops index
        them), the positions' rows gathered once for all layers for torch."""
        triton = uses_triton(backend, hidden.device)
        native = not triton and cpu_decode.usable(hidden)
        if native or triton:
            cos, sin = self._rope_tables
        else:
            cos, sin = (table.index_select(0, positions)[:, None] for table in self._rope_tables)  # (N, 1, D) each
        products = native and cpu_decode.products_pay(self.weight_bytes, hidden.shape[0])
        return Step(positions, meta, backend, cos, sin, native, products, triton)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (N, vocab) of final hidden states (N, hidden), in the model's dtype (no float32 copy of
        a bf16 model's logits: ``sampling.sample`` reads them as they are)."""
        head = self.lm_head
        if cpu_decode.usable(hidden) and cpu_decode.products_pay(self.weight_bytes, hidden.shape[0]):
            return cpu_decode.linear(hidden, head.weight, head.bias)
        return F.linear(hidden, head.weight, head.bias)
