"""Fixtures of the integration tests: the shipped warm start and its tokenizer."""

from __future__ import annotations

import pytest

from effreason.models import load_tokenizer
from effreason.warmstart import warmstart_dir


@pytest.fixture(scope="session")
def warmstart_folder():
    return warmstart_dir()


@pytest.fixture(scope="session")
def tokenizer(warmstart_folder):
    """The warm start's character-level tokenizer (70 ids) with its chat template."""
    return load_tokenizer(warmstart_folder)
