"""Problems to train and evaluate on: the built-in toy task or the user's own jsonl/parquet file.

A data row needs a question (``question``, ``problem`` or ``prompt``) and a reference answer
(``answer``, ``solution`` or ``final_answer``; a GSM8K answer ending ``#### x`` gives ``x``);
``level``/``difficulty`` is kept for per-difficulty breakdowns. A bad row is an error naming
the file and line (the row number, 1-based, for parquet).

``ProblemStream`` serves the training prompts in a seeded order that depends only on the
position, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from effreason.data.records import read_records
from effreason.tasks.problem import Problem

QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "solution", "final_answer")
DIFFICULTY_KEYS = ("difficulty", "level")
TOY_TRAIN_POOL = 4096
"""Training problems drawn from the toy task; the stream cycles through them in seeded order."""


def load_problems(path: str | Path) -> list[Problem]:
    """Problems of a ``.jsonl`` or ``.parquet`` file; ``ValueError`` naming the file and line on a bad row."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file not found: {path}")
    return [_problem_from_row(row, f"{path} line {line}") for line, row in read_records(path)]


def _first_present(row: dict, keys: tuple[str, ...]):
    return next((row[key] for key in keys if row.get(key) is not None), None)


def _problem_from_row(row: dict, where: str) -> Problem:
    question = _first_present(row, QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: missing question (one of the fields {', '.join(QUESTION_KEYS)})")
    answer = _first_present(row, ANSWER_KEYS)
    if answer is None:
        raise ValueError(f"{where}: missing answer (one of the fields {', '.join(ANSWER_KEYS)})")
    parsed = parse_reference_answer(answer)
    if parsed is None:
        raise ValueError(f"{where}: unparsable answer {answer!r}")
    difficulty = _first_present(row, DIFFICULTY_KEYS)
    return Problem(question=question, answer=parsed, difficulty=_as_level(difficulty), source="data", uid=where)


def parse_reference_answer(answer) -> str | None:
    """The reference answer as a non-empty string: numbers as written, GSM8K's ``... #### x`` as ``x``,
    a ``\\boxed{x}`` as ``x``; ``None`` when nothing usable remains."""
    from effreason.grading import extract_answer, normalise_answer

    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return None
    text = str(answer)
    if "####" in text:
        text = extract_answer(text, "gsm8k") or ""
    elif "\\boxed" in text:
        text = extract_answer(text, "boxed") or ""
    return text.strip() if normalise_answer(text) else None


def _as_level(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    digits = "".join(ch for ch in str(value) if ch.isdigit()) if value is not None else ""
    return int(digits) if digits else None


class ProblemStream:
    """An endless seeded order over ``problems``: epoch e is a fresh permutation seeded by (seed, e)."""

    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("problems must not be empty")
        self.problems = problems
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.problems)))
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def take(self, position: int, count: int) -> list[Problem]:
        """Problems ``position .. position + count - 1`` of the endless order."""
        size = len(self.problems)
        return [self.problems[self._order(p // size)[p % size]] for p in range(position, position + count)]


@dataclass
class TaskSetup:
    """Where the problems come from and how responses are graded (``is_correct(text, problem)``)."""

    train: ProblemStream
    evaluation: list[Problem]
    is_correct: Callable[[str, Problem], bool]
    name: str


def build_task(config) -> TaskSetup:
    """The toy task (default) or ``config.data`` graded with ``effreason.grading``."""
    if config.data is None:
        from effreason.tasks.toy import ToyTask

        task = ToyTask()
        train = task.problems(TOY_TRAIN_POOL, split="train", seed=config.seed)
        evaluation = [] if config.eval_data else task.problems(config.eval_problems, split="test", seed=0)
        setup = TaskSetup(ProblemStream(train, config.seed), evaluation, task.is_correct, "toy")
    else:
        problems = load_problems(config.data)
        held_out = 0 if config.eval_data else min(config.eval_problems, len(problems) // 2)
        train, evaluation = problems[: len(problems) - held_out], problems[len(problems) - held_out:]
        setup = TaskSetup(ProblemStream(train, config.seed), evaluation, _file_grader(config.answer_kind), Path(config.data).name)
    if config.eval_data:
        setup.evaluation = load_problems(config.eval_data)[: config.eval_problems]
    return setup


def _file_grader(kind: str) -> Callable[[str, Problem], bool]:
    from effreason.grading import grade

    def is_correct(response_text: str, problem: Problem) -> bool:
        return grade(response_text, problem.answer, kind)

    return is_correct
