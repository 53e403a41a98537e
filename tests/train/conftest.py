"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from train_helpers import save_tiny_qwen2, write_toy_jsonl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    save_tiny_qwen2(folder)
    return folder


@pytest.fixture(scope="session")
def toy_data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    write_toy_jsonl(path)
    return path
