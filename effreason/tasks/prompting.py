"""The paper's prompt (Arora & Zanette 2025), applied through the model's chat template.

Training and evaluation both build prompts here so the two always see the same text.
"""

from __future__ import annotations

PAPER_PROMPT = "Please reason step by step, and put your final answer within \\boxed{{}}. Question: {question}"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(question: str, tokenizer) -> str:
    """``PAPER_PROMPT`` filled with ``question``, as one user turn of the tokenizer's chat
    template with the assistant turn opened (``add_generation_prompt=True``); plain text when
    the tokenizer has no chat template."""
    if not isinstance(question, str):
        raise ValueError(f"question must be a str, got {type(question).__name__}")
    content = PAPER_PROMPT.format(question=question)
    if not has_chat_template(tokenizer):
        return content
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(question: str, tokenizer) -> list[int]:
    """Token ids of :func:`build_prompt`. A chat template already writes its own special tokens,
    so they are added by the tokenizer only for plain-text prompts."""
    text = build_prompt(question, tokenizer)
    return list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
