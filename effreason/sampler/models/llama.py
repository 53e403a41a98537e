"""Llama (HF ``LlamaForCausalLM``): the shared decoder layer of ``layers.py`` as it is.

Pre-norm grouped-query attention with RoPE (the config's scaling) and a SwiGLU MLP; q/k/v/o biases with
``attention_bias``, MLP biases with ``mlp_bias`` (absent biases are None).
"""

from __future__ import annotations

import torch

from effreason.sampler.models.layers import LayerWeights, Linear

MODEL_TYPE = "llama"


def layer_weights(layer: torch.nn.Module) -> LayerWeights:
    """The current weights of HF decoder layer ``layer`` (``LlamaDecoderLayer`` and the families that share
    its module names), by name; no copy."""
    attention, mlp = layer.self_attn, layer.mlp
    return LayerWeights(
        input_norm=layer.input_layernorm.weight,
        q_proj=Linear.of(attention.q_proj), k_proj=Linear.of(attention.k_proj),
        v_proj=Linear.of(attention.v_proj), o_proj=Linear.of(attention.o_proj),
        post_norm=layer.post_attention_layernorm.weight,
        gate_proj=Linear.of(mlp.gate_proj), up_proj=Linear.of(mlp.up_proj), down_proj=Linear.of(mlp.down_proj))
