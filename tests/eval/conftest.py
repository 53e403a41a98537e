"""A tiny random-weight Qwen2 checkpoint with the toy tokenizer, shared by the end-to-end tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    import torch

    from effreason.tasks.toy import ToyTask
    from effreason.warmstart import WarmstartConfig, build_model, build_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer(ToyTask())
    config = WarmstartConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    build_model(config, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
