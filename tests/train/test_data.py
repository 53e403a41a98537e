"""Data files: rows become Problems, bad rows are errors naming file and line; the stream order."""

import json

import pytest

from effreason.tasks.problem import Problem
from effreason.train.data import ProblemStream, load_problems, parse_reference_answer


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_become_problems(tmp_path):
    path = _write(tmp_path / "d.jsonl", [
        json.dumps({"question": "1+1?", "answer": "2", "level": "Level 3"}),
        "",
        json.dumps({"problem": "half?", "solution": "\\boxed{\\frac{1}{2}}"}),
        json.dumps({"question": "gsm", "answer": "so 3 + 4 = 7\n#### 7"}),
        json.dumps({"question": "int", "answer": 12}),
    ])
    problems = load_problems(path)
    assert [p.answer for p in problems] == ["2", "\\frac{1}{2}", "7", "12"]
    assert problems[0].difficulty == 3 and problems[1].difficulty is None


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"answer": "2"}', "missing question"),
        ('{"question": "q"}', "missing answer"),
        ('{"question": "q", "answer": "   "}', "unparsable answer"),
        ('{"question": "q", "answer": "#### "}', "unparsable answer"),
        ('{"question": "q", "answer": [1, 2]}', "unparsable answer"),
        ('{"question": "q", "answer": "2"', "not valid JSON"),
        ('[1, 2]', "JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "ok", "answer": "1"}), line])
    with pytest.raises(ValueError, match=rf"bad\.jsonl line 2: .*{message}"):
        load_problems(path)


def test_parquet_rows_are_numbered(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    table = pyarrow.table({"question": ["a", "b", "c"], "answer": ["1", None, "3"]})
    parquet.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d\.parquet line 2: missing answer"):
        load_problems(tmp_path / "d.parquet")


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_problems(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="empty file"):
        load_problems(_write(tmp_path / "empty.jsonl", [""]))


def test_reference_answer_parsing():
    assert parse_reference_answer(3.5) == "3.5"
    assert parse_reference_answer(True) is None
    assert parse_reference_answer("\\boxed{x^2}") == "x^2"


def test_stream_is_a_function_of_position():
    problems = [Problem(question=str(i), answer=str(i)) for i in range(7)]
    stream = ProblemStream(problems, seed=3)
    first = [p.question for p in stream.take(0, 20)]
    again = [p.question for p in ProblemStream(problems, seed=3).take(5, 15)]
    assert first[5:] == again
    assert sorted(first[:7]) == sorted(p.question for p in problems)  # each epoch is a permutation
    assert first[:7] != [p.question for p in ProblemStream(problems, seed=4).take(0, 7)]
