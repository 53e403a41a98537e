"""Helpers of the integration tests: tiny random Qwen2 models and toy prompts."""

from __future__ import annotations

import torch

from effreason.tasks.prompting import PAPER_PROMPT
from effreason.tasks.toy import ToyTask


def tiny_qwen2(tokenizer, folder, vocab_size: int | None = None, hidden_size: int = 32, seed: int = 0):
    """A random 2-layer Qwen2 (hidden ``hidden_size``, tied embeddings) on ``tokenizer``'s special ids,
    saved to ``folder`` and loaded back from it (so TRL can load the reference model from its name);
    ``vocab_size`` defaults to the tokenizer's and may be larger (the extra ids are never decoded)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Qwen2ForCausalLM.from_pretrained(folder)


def toy_rows(count: int, min_ops: int = 2, max_ops: int = 3) -> list[dict]:
    """Conversational prompts of toy problems (the paper's prompt) with their ``answer`` column."""
    problems = ToyTask(min_ops=min_ops, max_ops=max_ops).problems(count)
    return [
        {"prompt": [{"role": "user", "content": PAPER_PROMPT.format(question=problem.question)}], "answer": problem.answer}
        for problem in problems
    ]


def peak_allocated_bytes(step) -> int:
    """Peak CPU bytes allocated by one call of ``step`` beyond what existed before it: the maximum of
    the running sum of the torch profiler's memory events (allocations positive, frees negative)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        step()
    events = [event for event in profile.profiler.kineto_results.events() if event.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak
