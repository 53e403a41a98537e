"""Loading the policy: the saved tokenizer is used as saved, bad folders are clear errors."""

import pytest
import torch

from effreason.train.loop import load_policy

from train_helpers import CHARS, SPECIAL


def test_plain_tokenizer_is_loaded_as_saved(tiny_model_dir):
    model, tokenizer = load_policy(str(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32)
    ids = tokenizer("Hi 12", add_special_tokens=False)["input_ids"]
    assert ids == [len(SPECIAL) + CHARS.index(ch) for ch in "Hi 12"]
    assert tokenizer.decode(ids) == "Hi 12"
    assert model.config.model_type == "qwen2"


def test_folder_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_policy(str(tmp_path), device=torch.device("cpu"), dtype=torch.float32)
