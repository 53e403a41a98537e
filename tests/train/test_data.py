"""Data files through the one data layer: rows become Problems, bad rows are errors naming file and
line; the training run's task from any dataset spec; the stream order."""

import json

import pytest

from effreason.data import load_dataset
from effreason.data.formats import parse_reference_answer
from effreason.tasks.problem import Problem
from effreason.train.config import TrainConfig
from effreason.train.data import ProblemStream, build_task

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[2] / "effreason" / "data" / "fixtures"


def load_problems(path):
    """A bare path is a dataset spec of its own (the jsonl: loader with the usual field names)."""
    return load_dataset(str(path))


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
        ('{"answer": "2"}', "missing field 'question' or 'problem' or 'prompt'"),
        ('{"question": "q"}', "missing field 'answer' or 'solution' or 'final_answer'"),
        ('{"question": "q", "answer": "   "}', "missing field 'answer'"),
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
    with pytest.raises(ValueError, match=r"d\.parquet line 2: missing field 'answer'"):
        load_problems(tmp_path / "d.parquet")


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
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


@pytest.mark.parametrize("spec, source, count", [
    (f"gsm8k:{FIXTURES / 'gsm8k.jsonl'}", "gsm8k", 3),
    (f"math500:{FIXTURES / 'math500.jsonl'}", "math500", 4),
    (str(FIXTURES / "math500.parquet"), "jsonl", 4),
])
def test_training_reads_the_eval_dataset_specs(spec, source, count):
    task = build_task(TrainConfig(data=spec, eval_problems=1))
    problems = task.train.problems + task.evaluation
    assert len(problems) == count and len(task.evaluation) == 1
    assert all(p.source == source for p in problems)
    problem = task.evaluation[0]
    assert task.is_correct(f"so \\boxed{{{problem.answer}}}", problem)
    assert not task.is_correct("no answer", problem)


def test_toy_task_is_the_eval_toy_dataset():
    task = build_task(TrainConfig(eval_problems=7))
    assert task.name == "toy" and task.evaluation == load_dataset("toy", limit=7)
    assert task.train.problems == load_dataset("toy", split="train", limit=4096)


def test_eval_data_spec_replaces_the_held_out_rows():
    task = build_task(TrainConfig(data=f"gsm8k:{FIXTURES / 'gsm8k.jsonl'}", eval_data="toy", eval_problems=5))
    assert len(task.train.problems) == 3 and [p.source for p in task.evaluation] == ["toy"] * 5
