"""The record every task and dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    ``question`` is the bare question text (the prompt template is applied later),
    ``answer`` the reference final answer as a string, ``difficulty`` an optional level
    used for per-difficulty breakdowns, ``source`` the dataset name, ``uid`` a stable id.
    """

    question: str
    answer: str
    difficulty: int | None = None
    source: str = ""
    uid: str = ""
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
