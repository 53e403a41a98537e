"""Qwen3 (HF ``Qwen3ForCausalLM``): Llama's decoder layer plus an RMSNorm over each query and each key head
before RoPE (``self_attn.q_norm``, ``self_attn.k_norm``, weights of size ``head_dim``).

    q_h = RMSNorm(q_h) * q_norm,  k_h = RMSNorm(k_h) * k_norm   for every head h, then RoPE

(Qwen Team 2025, "Qwen3 Technical Report": QK-Norm in place of Qwen2's q/k/v biases.)
"""

from __future__ import annotations

import dataclasses

import torch

from effreason.sampler.models import llama
from effreason.sampler.models.layers import LayerWeights

MODEL_TYPE = "qwen3"


def layer_weights(layer: torch.nn.Module) -> LayerWeights:
    """The current weights of HF ``Qwen3DecoderLayer`` ``layer`` by name, its q/k norms included; no copy."""
    attention = layer.self_attn
    return dataclasses.replace(llama.layer_weights(layer), q_norm=attention.q_norm.weight,
                               k_norm=attention.k_norm.weight)
