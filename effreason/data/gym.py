"""Procedural tasks from the optional ``reasoning-gym`` package (``pip install effreason[tasks]``).

``gym:<task>`` generates problems offline, e.g. ``gym:gsm_symbolic`` (GSM8K-style word problems
from the GSM-Symbolic templates) or the out-of-domain logic tasks ``gym:knights_knaves``,
``gym:propositional_logic``. Each task is graded by its own scorer
(``reasoning_gym.get_score_answer_fn``) on the response's last ``\\boxed{}``; a score of 1 is correct.

Splits: reasoning-gym draws item ``i`` from ``seed + i``, so the test split starts a billion
seeds after the train split; the two never overlap for fewer than a billion items.
"""

from __future__ import annotations

from functools import lru_cache

from effreason.grading import extract_answer
from effreason.tasks.problem import Problem

SPLIT_SEED_OFFSETS = {"train": 0, "test": 1_000_000_000}
SOURCE_PREFIX = "gym:"


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(
            "gym:<task> datasets need the optional reasoning-gym package: pip install 'effreason[tasks]'"
        ) from None
    return reasoning_gym


def load_gym(task: str, *, size: int, split: str = "test", seed: int = 0) -> list[Problem]:
    """``size`` problems of reasoning-gym task ``task`` for ``split``; the entry is kept in ``metadata["entry"]``."""
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEED_OFFSETS)}, got {split!r}")
    reasoning_gym = _reasoning_gym()
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=SPLIT_SEED_OFFSETS[split] + seed)
    except ValueError as error:
        raise ValueError(f"unknown reasoning-gym task {task!r} in 'gym:{task}' ({error})") from None
    return [_problem(task, index, dataset[index]) for index in range(size)]


def _problem(task: str, index: int, entry: dict) -> Problem:
    difficulty = entry.get("metadata", {}).get("difficulty")
    return Problem(
        question=entry["question"],
        answer="" if entry["answer"] is None else str(entry["answer"]),
        difficulty=int(difficulty) if isinstance(difficulty, (int, float)) else None,
        source=SOURCE_PREFIX + task,
        uid=f"{SOURCE_PREFIX}{task}-{entry.get('metadata', {}).get('source_index', index)}",
        metadata={"entry": entry},
    )


def gym_is_correct(response: str, problem: Problem) -> bool:
    """The task's own scorer on the response's last ``\\boxed{}`` answer equals 1. Never raises on odd output."""
    answer = extract_answer(response, kind="boxed")
    if answer is None:
        return False
    try:
        return _scorer(problem.source.removeprefix(SOURCE_PREFIX))(answer, problem.metadata["entry"]) >= 1.0
    except Exception:  # task scorers parse free text and may raise on odd answers
        return False


@lru_cache(maxsize=None)
def _scorer(task: str):
    return _reasoning_gym().get_score_answer_fn(task)
