"""The training run's problems: a seeded stream of training prompts and a held-out evaluation set.

Both come from the one data layer (:func:`effreason.data.load_dataset`, the specs ``python -m
effreason.eval`` reads: ``toy``, ``gsm8k:PATH``, ``math500:PATH``, ``aime:PATH``, ``jsonl:PATH`` or a
bare ``.jsonl``/``.parquet`` path, ``gym:TASK``) and are graded by its one scorer
(:func:`effreason.data.score_response`). Generated datasets (``toy``, ``gym:``) give a training pool
from their train split and the evaluation from their test split; a file is split, its last rows
held out, unless ``--eval-data`` names the evaluation set.

``ProblemStream`` serves the training prompts in a seeded order that depends only on the
position, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from effreason.data import load_dataset, parse_spec, score_response
from effreason.tasks.problem import Problem

DEFAULT_DATA = "toy"
GENERATED_TRAIN_POOL = 4096
"""Training problems drawn from a generated dataset (toy, gym:); the stream cycles through them in seeded order."""
GENERATED_DATASETS = ("toy", "gym")


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
    """The training stream and held-out problems of ``config.data`` (default ``toy``), graded by
    :func:`effreason.data.score_response` with ``config.answer_kind``."""
    spec = config.data or DEFAULT_DATA
    name, argument = parse_spec(spec)
    if name in GENERATED_DATASETS:
        train = load_dataset(spec, split="train", seed=config.seed, limit=GENERATED_TRAIN_POOL)
        evaluation = _held_out(spec, config) if config.eval_problems and not config.eval_data else []
    else:
        problems = load_dataset(spec)
        held_out = 0 if config.eval_data else min(config.eval_problems, len(problems) // 2)
        train, evaluation = problems[: len(problems) - held_out], problems[len(problems) - held_out:]
    if config.eval_data and config.eval_problems:
        evaluation = _held_out(config.eval_data, config)
    is_correct = functools.partial(score_response, answer_kind=config.answer_kind)
    label = spec if name in GENERATED_DATASETS else Path(argument).name
    return TaskSetup(ProblemStream(train, config.seed), evaluation, is_correct, label)


def _held_out(spec: str, config) -> list[Problem]:
    """At most ``config.eval_problems`` problems of ``spec``'s test split (generated) or file."""
    return load_dataset(spec, split="test", seed=0, limit=config.eval_problems)
