"""Random-weight Qwen2 models of the benchmarks' shapes, in memory or written as a Hugging Face folder.

    python bench/random_models.py qwen2.5-1.5b DIR [--dtype bfloat16]

writes ``config.json``, the random weights and the warm start's tokenizer (``effreason/assets/warmstart``; ids
beyond its 70 tokens decode to nothing), a folder ``python -m effreason.train --model DIR`` loads. Weights are
initialised on CUDA when present.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
"""Qwen2.5-1.5B and -7B as published (the paper's DeepSeek-R1-Distill models share their layers), and a CPU-sized one."""


def random_qwen2(shape: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """A ``SHAPES[shape]`` Qwen2 with HF's random initialisation (seed 0), the warm start's special token ids and room
    for the paper's 512-token prompts plus 32k-token responses."""
    from effreason.warmstart import warmstart_dir

    tokenizer = AutoTokenizer.from_pretrained(warmstart_dir())
    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=40960, rope_theta=1e6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype)


def write_random_model(folder, shape: str, *, dtype: torch.dtype = torch.bfloat16) -> None:
    """``random_qwen2(shape)`` saved in ``dtype`` with the warm start's tokenizer: a model folder for ``--model``."""
    from effreason.warmstart import warmstart_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    random_qwen2(shape, device=device, dtype=dtype).save_pretrained(folder)
    AutoTokenizer.from_pretrained(warmstart_dir()).save_pretrained(folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=tuple(SHAPES))
    parser.add_argument("folder")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    write_random_model(args.folder, args.shape, dtype=getattr(torch, args.dtype))
    print(f"wrote a random {args.shape} Qwen2 ({args.dtype}) to {args.folder}")


if __name__ == "__main__":
    main()
