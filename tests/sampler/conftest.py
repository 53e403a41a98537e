"""The ``model`` fixture of the sampler tests: each test runs on a tiny Qwen2, Llama and Qwen3."""

from __future__ import annotations

import pytest
from sampler_models import tiny_llama, tiny_qwen2, tiny_qwen3


MODELS = {"qwen2": tiny_qwen2, "llama": tiny_llama, "qwen3": tiny_qwen3}


@pytest.fixture(params=list(MODELS))
def model(request):
    return MODELS[request.param]()
