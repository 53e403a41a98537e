"""Qwen2 (HF ``Qwen2ForCausalLM``): Llama's decoder layer with q/k/v biases, under Llama's module names.

Sliding-window layers (``use_sliding_window``) are refused by ``PagedModel``.
"""

from __future__ import annotations

from effreason.sampler.models import llama

MODEL_TYPE = "qwen2"
layer_weights = llama.layer_weights
