"""Helpers of the training tests: a tiny Qwen2 checkpoint on disk, toy data files, shortened run flags."""

from __future__ import annotations

import json

import torch

CHARS = [chr(code) for code in range(32, 127)] + ["\n"]
SPECIAL = ["<|endoftext|>", "<|pad|>"]


def save_tiny_qwen2(folder, seed: int = 0) -> None:
    """A character-level tokenizer and a 2-layer random Qwen2 (hidden 32) saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {token: index for index, token in enumerate(SPECIAL + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL[0]))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIAL[0], pad_token=SPECIAL[1])
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=0, pad_token_id=1, bos_token_id=0,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_toy_jsonl(path, count: int = 24) -> None:
    rows = [{"question": f"What is {i} + {i % 7}?", "answer": str(i + i % 7), "level": 1 + i % 3} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def tiny_run_flags(model_dir, data_file, out_dir, **overrides) -> list[str]:
    """CLI flags of a few-second run on the tiny model."""
    settings = dict(
        model=model_dir, data=data_file, out=out_dir, steps=2, group_size=2, prompts_per_step=4,
        max_new_tokens=8, eval_problems=4, eval_max_new_tokens=8, checkpoint_every=1, lr=1e-3,
        quiet=None,
    )
    settings.update(overrides)
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is False:
            flags.append("--no-" + name.replace("_", "-"))
        elif value is None or value is True:
            flags.append(flag)
        else:
            flags += [flag, str(value)]
    return flags


def crash_at_step(monkeypatch, step: int, message: str = "crash") -> None:
    """Make the training loop raise ``RuntimeError(message)`` when it starts step ``step`` (1-based);
    ``monkeypatch.setattr(Trainer, "_one_step", Trainer._one_step)`` before the patch undoes it."""
    from effreason.train.loop import Trainer

    original, calls = Trainer._one_step, {"count": 0}

    def one_step(self):
        calls["count"] += 1
        if calls["count"] == step:
            raise RuntimeError(message)
        return original(self)

    monkeypatch.setattr(Trainer, "_one_step", one_step)
