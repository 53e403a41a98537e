"""Dataset loaders: every format from the committed fixtures, splits, scorers, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from effreason.data import load_dataset, parse_spec, score_response
from effreason.tasks.problem import Problem

FIXTURES = Path(__file__).resolve().parents[2] / "effreason" / "data" / "fixtures"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def test_gsm8k_reference_is_the_final_answer_line():
    problems = load_dataset(f"gsm8k:{fixture('gsm8k.jsonl')}")
    assert [p.answer for p in problems] == ["26", "1,000", "-5"]
    assert problems[0].source == "gsm8k" and "####" in problems[0].metadata["solution"]
    assert len({p.uid for p in problems}) == 3


@pytest.mark.parametrize("file_name", ["math500.jsonl", "math500.parquet"])
def test_math500_jsonl_and_parquet_agree(file_name):
    problems = load_dataset(f"math500:{fixture(file_name)}")
    assert [p.answer for p in problems] == ["\\frac{3}{4}", "2", "2\\sqrt{2}", "[0,1)"]
    assert [p.difficulty for p in problems] == [1, 2, 3, 5]
    assert problems[0].uid == "test/prealgebra/1.json"


def test_aime_integer_answers_become_strings():
    problems = load_dataset(f"aime:{fixture('aime.jsonl')}")
    assert [p.answer for p in problems] == ["24", "24"]
    assert problems[0].uid == "2024-I-1"


def test_jsonl_with_custom_fields():
    problems = load_dataset(f"jsonl:{fixture('custom.jsonl')}", question_field="prompt", answer_field="target")
    assert [(p.question, p.answer) for p in problems] == [("What is 7 times 8?", "56"), ("What is the capital letter after B?", "C")]


def test_limit_takes_the_first_problems():
    assert len(load_dataset(f"math500:{fixture('math500.jsonl')}", limit=2)) == 2


def test_toy_is_the_held_out_split_and_deterministic():
    from effreason.tasks.toy import split_of

    first, again = load_dataset("toy", limit=12, seed=3), load_dataset("toy", limit=12, seed=3)
    assert first == again and len(first) == 12
    assert all(split_of(p.question) == "test" and p.difficulty is not None for p in first)


def test_gym_task_with_its_own_scorer():
    pytest.importorskip("reasoning_gym")
    test_problems = load_dataset("gym:basic_arithmetic", limit=4)
    train_problems = load_dataset("gym:basic_arithmetic", limit=4, split="train")
    assert {p.question for p in test_problems}.isdisjoint({p.question for p in train_problems})
    problem = test_problems[0]
    assert problem.source == "gym:basic_arithmetic"
    assert score_response(f"so \\boxed{{{problem.answer}}}", problem)
    assert not score_response("\\boxed{not a number}", problem)
    assert not score_response(None, problem)


def test_unknown_gym_task():
    pytest.importorskip("reasoning_gym")
    with pytest.raises(ValueError, match="no_such_task"):
        load_dataset("gym:no_such_task", limit=2)


def test_score_response_uses_boxed_grading_for_files():
    problem = Problem(question="q", answer="\\frac{3}{4}", source="math500")
    assert score_response("... \\boxed{0.75}", problem)
    assert not score_response("... 0.75", problem)  # the paper grades the boxed answer only
    assert not score_response(12345, problem)


def test_score_response_toy():
    problem = load_dataset("toy", limit=1)[0]
    assert score_response(f"So the answer is \\boxed{{{problem.answer}}}.", problem)
    assert not score_response("So the answer is \\boxed{-1}.", problem)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "spec_name,text,message",
    [
        ("gsm8k", '{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n', r"bad\.jsonl line 2: missing field 'answer'"),
        ("gsm8k", '{"question": "q", "answer": "no final line"}\n', r"line 1: field 'answer' has no '#### x'"),
        ("math500", "", r"bad\.jsonl: no records \(empty file\)"),
        ("math500", "\n\n", r"no records"),
        ("aime", '{"problem": "q", "answer": 1}\nnot json\n', r"line 2: not valid JSON"),
        ("aime", "[1, 2]\n", r"line 1: expected a JSON object"),
        ("jsonl", '{"question": "q", "answer": ""}\n', r"line 1: missing field 'answer'"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, spec_name, text, message):
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"{spec_name}:{path}")


def test_damaged_parquet(tmp_path):
    path = write(tmp_path, "bad.parquet", "not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_dataset(f"math500:{path}")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_dataset(f"gsm8k:{tmp_path / 'absent.jsonl'}")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("mmlu:x.jsonl", "unknown dataset 'mmlu'"),
        ("gsm8k", "needs PATH"),
        ("gym", "needs TASK"),
        ("toy:3", "takes no argument"),
        ("", "non-empty"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_bad_limit():
    with pytest.raises(ValueError, match="limit"):
        load_dataset("toy", limit=0)


def test_gym_without_the_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
    with pytest.raises(ImportError, match=r"pip install 'effreason\[tasks\]'"):
        load_dataset("gym:chain_sum", limit=2)
