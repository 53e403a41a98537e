"""Loading the policy: the saved tokenizer is used as saved, bad folders are clear errors."""

import pytest
import torch

from effreason.models import load_checkpoint

from train_helpers import CHARS, SPECIAL


def test_plain_tokenizer_is_loaded_as_saved(tiny_model_dir):
    model, tokenizer, _ = load_checkpoint(tiny_model_dir, device=torch.device("cpu"), dtype=torch.float32)
    ids = tokenizer("Hi 12", add_special_tokens=False)["input_ids"]
    assert ids == [len(SPECIAL) + CHARS.index(ch) for ch in "Hi 12"]
    assert tokenizer.decode(ids) == "Hi 12"
    assert model.config.model_type == "qwen2"


def test_folder_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no Hugging Face checkpoint"):
        load_checkpoint(tmp_path, device="cpu", dtype="float32")


def test_no_path_is_the_built_in_warm_start():
    from effreason.warmstart import SHIPPED_DIR

    model, tokenizer, folder = load_checkpoint(device="cpu", dtype="float32")
    assert folder == SHIPPED_DIR and not model.training and tokenizer.eos_token == "<|im_end|>"


def test_stop_tokens_put_the_tokenizer_first(tiny_model_dir):
    from effreason.models import pad_token_id, stop_token_ids

    model, tokenizer, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    model.generation_config.eos_token_id = [5, tokenizer.eos_token_id, 3]
    assert stop_token_ids(model, tokenizer) == (tokenizer.eos_token_id, 5, 3)
    assert pad_token_id(tokenizer, (9,)) == tokenizer.pad_token_id
