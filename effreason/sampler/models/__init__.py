"""Model families of the sampler, chosen by the Hugging Face config's ``model_type``.

Each family is one file naming where its decoder layer's weights live in the HF model (``layer_weights``);
the math is the shared layer of ``layers.py``, run by ``PagedModel`` (``paged_model.py``). Adding a family:
one file with ``MODEL_TYPE`` and ``layer_weights``, its entry in ``FAMILIES``, and a greedy-equality test
against HF ``generate()`` (``tests/sampler/test_sampler_models.py``).
"""

from __future__ import annotations

import torch

from effreason.sampler.models import llama, qwen2, qwen3
from effreason.sampler.models.paged_model import PagedModel

FAMILIES = {family.MODEL_TYPE: family.layer_weights for family in (llama, qwen2, qwen3)}


def paged_model(hf_model: torch.nn.Module) -> PagedModel:
    """The paged forward of ``hf_model``, a Hugging Face causal LM of a type in ``FAMILIES`` (else ValueError)."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        found = repr(model_type) if model_type is not None else f"a {type(hf_model).__name__} without an HF config"
        raise ValueError(f"model must be a Hugging Face causal LM of a supported model_type "
                         f"({', '.join(sorted(FAMILIES))}), got {found}")
    return PagedModel(hf_model, FAMILIES[model_type])


__all__ = ["FAMILIES", "PagedModel", "paged_model"]
