"""``load_dataset("NAME[:PATH]")``: every dataset the eval, sweep and training commands accept."""

from __future__ import annotations

from effreason.data.formats import load_aime, load_gsm8k, load_math500, load_records
from effreason.data.gym import load_gym
from effreason.data.records import RECORD_SUFFIXES
from effreason.tasks.problem import Problem
from effreason.tasks.toy import ToyTask

DEFAULT_GENERATED_SIZE = 200  # problems drawn from a generator (toy, gym) when no limit is given
FILE_LOADERS = {"gsm8k": load_gsm8k, "math500": load_math500, "aime": load_aime, "jsonl": load_records}
DATASET_NAMES = ("toy", *FILE_LOADERS, "gym")
SPEC_HELP = "toy, gsm8k:PATH, math500:PATH, aime:PATH, jsonl:PATH (or a bare .jsonl/.parquet path) or gym:TASK"


def load_dataset(
    spec: str,
    *,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
) -> list[Problem]:
    """The problems named by ``spec`` (``toy``, ``gsm8k:PATH``, ``math500:PATH``, ``aime:PATH``,
    ``jsonl:PATH``, ``gym:TASK``), at most ``limit`` of them (files: the first ``limit``).

    ``split`` and ``seed`` select generated problems (``toy``: the task's held-out split by
    default; ``gym``: see :mod:`effreason.data.gym`); files are used as they are.
    ``question_field``/``answer_field`` name the fields of a ``jsonl:`` file (default: the usual
    names, see :func:`effreason.data.formats.load_records`). Errors are one
    ``ValueError`` / ``FileNotFoundError`` / ``ImportError`` whose message says what is wrong.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    name, argument = parse_spec(spec)
    size = limit or DEFAULT_GENERATED_SIZE
    if name == "toy":
        return ToyTask().problems(size, split=split, seed=seed)
    if name == "gym":
        return load_gym(argument, size=size, split=split, seed=seed)
    if name == "jsonl":
        problems = load_records(argument, question_field=question_field, answer_field=answer_field)
    else:
        problems = FILE_LOADERS[name](argument)
    return problems[:limit]


def parse_spec(spec: str) -> tuple[str, str]:
    """``"NAME[:ARGUMENT]"`` -> ``(name, argument)``, checking the name and that file formats have a path;
    a bare ``.jsonl``/``.json``/``.parquet`` path is ``("jsonl", path)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset must be a non-empty string ({SPEC_HELP}), got {spec!r}")
    name, _, argument = spec.strip().partition(":")
    if not argument and name.endswith(RECORD_SUFFIXES):
        return "jsonl", name
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r} in {spec!r}: expected {SPEC_HELP}")
    if name == "toy" and argument:
        raise ValueError(f"dataset 'toy' takes no argument, got {spec!r}")
    if name != "toy" and not argument:
        what = "TASK" if name == "gym" else "PATH"
        raise ValueError(f"dataset {name!r} needs {what}: {name}:{what}")
    return name, argument
