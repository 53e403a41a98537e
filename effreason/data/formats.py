"""The file formats ``load_dataset`` knows: one function per format, records -> ``Problem``s.

* ``gsm8k``: ``question`` and ``answer``, the answer a worked solution ending ``#### x``
  (the reference is ``x``; the solution is kept in ``metadata["solution"]``).
* ``math500``: ``problem`` and ``answer``; ``level`` (``3`` or ``"Level 3"``) becomes the
  difficulty; ``subject`` and ``unique_id`` are kept.
* ``aime``: ``problem`` and ``answer`` (an integer in the files people use).
* ``jsonl``: any records, with the question and answer field names given by the caller.

Field names are matched case-insensitively (``Problem``/``Answer`` in some AIME files).
"""

from __future__ import annotations

import re
from pathlib import Path

from effreason.data.records import field_value, read_records
from effreason.grading import extract_answer
from effreason.tasks.problem import Problem

_LEVEL_NUMBER = re.compile(r"-?\d+")


def load_gsm8k(path: str | Path) -> list[Problem]:
    """GSM8K JSON Lines: reference = the text after ``####`` of the ``answer`` field."""
    problems = []
    for line_number, record in read_records(path):
        solution = str(field_value(record, ("answer",), path=path, line_number=line_number))
        answer = extract_answer(solution, kind="gsm8k")
        if answer is None:
            raise ValueError(f"{path} line {line_number}: field 'answer' has no '#### x' final answer")
        question = field_value(record, ("question",), path=path, line_number=line_number)
        problems.append(_problem(question, answer, "gsm8k", line_number, metadata={"solution": solution}))
    return problems


def load_math500(path: str | Path) -> list[Problem]:
    """MATH500 JSON Lines or Parquet: ``problem``, ``answer``, optional ``level`` as difficulty."""
    problems = []
    for line_number, record in read_records(path):
        question = field_value(record, ("problem",), path=path, line_number=line_number)
        answer = field_value(record, ("answer",), path=path, line_number=line_number)
        metadata = {key: record[key] for key in ("subject", "unique_id") if key in record}
        uid = str(record.get("unique_id", "")) or None
        problems.append(
            _problem(question, answer, "math500", line_number, difficulty=_level(record), uid=uid, metadata=metadata)
        )
    return problems


def load_aime(path: str | Path) -> list[Problem]:
    """AIME JSON Lines or Parquet: ``problem`` (or ``question``) and ``answer``."""
    problems = []
    for line_number, record in read_records(path):
        question = field_value(record, ("problem", "question"), path=path, line_number=line_number)
        answer = field_value(record, ("answer",), path=path, line_number=line_number)
        uid = str(record.get("id", record.get("ID", ""))) or None
        problems.append(_problem(question, answer, "aime", line_number, uid=uid))
    return problems


def load_records(path: str | Path, *, question_field: str = "question", answer_field: str = "answer") -> list[Problem]:
    """Any JSON Lines or Parquet file, with the question and answer in the named fields."""
    problems = []
    for line_number, record in read_records(path):
        question = field_value(record, (question_field,), path=path, line_number=line_number)
        answer = field_value(record, (answer_field,), path=path, line_number=line_number)
        problems.append(_problem(question, answer, "jsonl", line_number))
    return problems


def _level(record: dict) -> int | None:
    """``level`` as an int (``3`` or ``"Level 3"``), else None."""
    match = _LEVEL_NUMBER.search(str(record.get("level", "")))
    return int(match.group(0)) if match else None


def _problem(question, answer, source: str, line_number: int, *, difficulty=None, uid=None, metadata=None) -> Problem:
    return Problem(
        question=str(question).strip(),
        answer=str(answer).strip(),
        difficulty=difficulty,
        source=source,
        uid=uid or f"{source}-{line_number}",
        metadata=metadata or {},
    )
