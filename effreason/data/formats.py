"""The file formats ``load_dataset`` knows: one function per format, records -> ``Problem``s.

* ``gsm8k``: ``question`` and ``answer``, the answer a worked solution ending ``#### x``
  (the reference is ``x``; the solution is kept in ``metadata["solution"]``).
* ``math500``: ``problem`` and ``answer``; ``level`` (``3`` or ``"Level 3"``) becomes the
  difficulty; ``subject`` and ``unique_id`` are kept.
* ``aime``: ``problem`` and ``answer`` (an integer in the files people use).
* ``jsonl``: any records; the question and answer fields named by the caller, or found among the
  usual names (``question``/``problem``/``prompt``, ``answer``/``solution``/``final_answer``).

Field names are matched case-insensitively (``Problem``/``Answer`` in some AIME files).
"""

from __future__ import annotations

import re
from pathlib import Path

from effreason.data.records import field_value, read_records
from effreason.grading import extract_answer, normalise_answer
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


QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "solution", "final_answer")
DIFFICULTY_FIELDS = ("difficulty", "level")


def load_records(path: str | Path, *, question_field: str | None = None, answer_field: str | None = None) -> list[Problem]:
    """Any JSON Lines or Parquet file (``jsonl:PATH``, or a bare ``.jsonl``/``.parquet`` path).

    The question is the named field, or without a name the first of ``QUESTION_FIELDS``; the
    answer likewise (``ANSWER_FIELDS``), parsed by :func:`parse_reference_answer` (a GSM8K
    ``... #### x`` or a ``\\boxed{x}`` gives ``x``); ``difficulty`` or ``level`` becomes the
    difficulty. A bad record is a ``ValueError`` naming the file and line.
    """
    questions = (question_field,) if question_field else QUESTION_FIELDS
    answers = (answer_field,) if answer_field else ANSWER_FIELDS
    problems = []
    for line_number, record in read_records(path):
        question = field_value(record, questions, path=path, line_number=line_number)
        raw_answer = field_value(record, answers, path=path, line_number=line_number)
        answer = parse_reference_answer(raw_answer)
        if answer is None:
            raise ValueError(f"{path} line {line_number}: unparsable answer {raw_answer!r}")
        difficulty = next((record[name] for name in DIFFICULTY_FIELDS if record.get(name) is not None), None)
        problems.append(_problem(question, answer, "jsonl", line_number, difficulty=_as_level(difficulty)))
    return problems


def parse_reference_answer(answer) -> str | None:
    """The reference answer as a non-empty string: numbers as written, GSM8K's ``... #### x`` as ``x``,
    a ``\\boxed{x}`` as ``x``; ``None`` when nothing usable remains."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return None
    text = str(answer)
    if "####" in text:
        text = extract_answer(text, "gsm8k") or ""
    elif "\\boxed" in text:
        text = extract_answer(text, "boxed") or ""
    return text.strip() if normalise_answer(text) else None


def _as_level(value) -> int | None:
    """A difficulty as an int: ``3``, ``"3"`` and ``"Level 3"`` give 3; anything else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    match = _LEVEL_NUMBER.search(str(value))
    return int(match.group(0)) if match else None


def _level(record: dict) -> int | None:
    """``level`` as an int (``3`` or ``"Level 3"``), else None."""
    return _as_level(record.get("level"))


def _problem(question, answer, source: str, line_number: int, *, difficulty=None, uid=None, metadata=None) -> Problem:
    return Problem(
        question=str(question).strip(),
        answer=str(answer).strip(),
        difficulty=difficulty,
        source=source,
        uid=uid or f"{source}-{line_number}",
        metadata=metadata or {},
    )
