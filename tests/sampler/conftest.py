"""The ``model`` fixture of the sampler tests: each test runs on a tiny Qwen2 and a tiny Llama."""

from __future__ import annotations

import pytest
from sampler_models import tiny_llama, tiny_qwen2


@pytest.fixture(params=["qwen2", "llama"])
def model(request):
    return tiny_qwen2() if request.param == "qwen2" else tiny_llama()
