"""The paper's length-penalised reward as a TRL reward function.

TRL calls a reward function with keyword arguments, one list entry per completion:
``reward(prompts=..., completions=..., completion_ids=..., **dataset_columns)`` and expects one
float per completion. ``paper_reward`` grades each completion against the dataset's answer column
(``effreason.grading.grade``, by default the paper's last-``\\boxed{}`` rule), takes its length as
its token count, and scores every group of completions of one prompt with
``effreason.rewards.length_penalized_reward``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from effreason._validation import check_unit_interval
from effreason.data.scoring import DEFAULT_ANSWER_KIND
from effreason.grading import ANSWER_KINDS, grade
from effreason.rewards import length_penalized_reward


def paper_reward(
    alpha: float = 0.2,
    num_generations: int | None = None,
    answer_column: str = "answer",
    *,
    answer_kind: str = DEFAULT_ANSWER_KIND,
    eos_token_ids: Sequence[int] | None = None,
) -> Callable[..., list[float]]:
    """A TRL reward function computing the paper's reward (Arora & Zanette 2025) over each group.

    Within each group of completions of one prompt, with mean and population std of the token
    counts taken over the group's correct completions only::

        r_i = 1 - alpha * sigmoid((len_i - mean) / (std + 1e-7))   if completion i is correct
        r_i = 0                                                      otherwise

    Args:
        alpha: the length-penalty strength, in [0, 1] (the paper trains 0.05 .. 0.4).
        num_generations: the group size: consecutive blocks of this many completions share a
            prompt (TRL's ``num_generations``; the call's batch must be a multiple). None: a
            group is a run of consecutive identical prompts.
        answer_column: the dataset column with the reference answer (any value; ``str()`` is graded).
        answer_kind: how the final answer is read from the completion (``effreason.grading.ANSWER_KINDS``);
            default the paper's rule, the last ``\\boxed{}``.
        eos_token_ids: when given, a completion whose last token id is none of these was truncated
            and counts as wrong, as in the paper. None: completions are graded on their text alone.

    Returns:
        ``reward(prompts, completions, completion_ids, **columns) -> list[float]``, named
        ``paper_reward`` (TRL logs it as ``rewards/paper_reward/mean``). Completions may be plain
        strings or conversations (lists of ``{"role", "content"}`` messages); lengths are
        ``len(completion_ids[i])``.
    """
    alpha = check_unit_interval("alpha", alpha)
    _check_num_generations(num_generations)
    if not isinstance(answer_column, str) or not answer_column:
        raise ValueError(f"answer_column must be a non-empty str, got {answer_column!r}")
    if answer_kind not in ANSWER_KINDS:
        raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {answer_kind!r}")
    stop_ids = None if eos_token_ids is None else frozenset(int(token) for token in eos_token_ids)

    def reward(prompts, completions, completion_ids, **columns) -> list[float]:
        references = _answer_references(columns, answer_column, len(completions))
        correct = torch.tensor([
            grade(completion_text(completion), str(reference), kind=answer_kind) and _ended(ids, stop_ids)
            for completion, ids, reference in zip(completions, completion_ids, references, strict=True)
        ], dtype=torch.bool)
        lengths = torch.tensor([len(ids) for ids in completion_ids], dtype=torch.int64)  # (S,)
        rewards = torch.zeros(len(completions), dtype=torch.float32)
        for start, end in group_bounds(prompts, num_generations):
            rewards[start:end] = length_penalized_reward(correct[start:end], lengths[start:end], end - start, alpha)
        return rewards.tolist()

    reward.__name__ = reward.__qualname__ = "paper_reward"
    return reward


def _check_num_generations(num_generations) -> None:
    if num_generations is None:
        return
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be None or an int >= 1, got {num_generations!r}")


def _answer_references(columns: dict, answer_column: str, num_completions: int) -> list:
    if answer_column not in columns:
        available = sorted(name for name in columns if not callable(columns[name]))
        raise ValueError(f"answer_column {answer_column!r} is not among the dataset columns {available}")
    references = columns[answer_column]
    if len(references) != num_completions:
        raise ValueError(f"column {answer_column!r} has {len(references)} values for {num_completions} completions")
    return references


def _ended(ids, stop_ids: frozenset[int] | None) -> bool:
    """True when EOS is not checked, or the completion's last token is an EOS id."""
    return stop_ids is None or (len(ids) > 0 and int(ids[-1]) in stop_ids)


def completion_text(completion) -> str:
    """The text of a plain-text completion (a str) or of a conversational one (a list of messages,
    whose contents, str or lists of ``{"type": "text", "text": ...}`` parts, are joined with newlines)."""
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, (list, tuple)):
        raise ValueError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")
    return "\n".join(_message_text(message.get("content")) for message in completion)


def _message_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def group_bounds(prompts: Sequence, num_generations: int | None) -> list[tuple[int, int]]:
    """``(start, end)`` of each group: blocks of ``num_generations``, or runs of equal consecutive prompts."""
    num_samples = len(prompts)
    if num_generations is not None:
        if num_samples % num_generations:
            raise ValueError(
                f"the batch has {num_samples} completions, not a multiple of num_generations={num_generations}: "
                "a group of one prompt is split (per_device_train_batch_size should be a multiple of num_generations)"
            )
        return [(start, start + num_generations) for start in range(0, num_samples, num_generations)]
    bounds, start = [], 0
    for index in range(1, num_samples + 1):
        if index == num_samples or prompts[index] != prompts[start]:
            bounds.append((start, index))
            start = index
    return bounds
