"""The built-in toy task: generator, split, checker and trace writer."""

import random

import pytest

from effreason.tasks.problem import Problem
from effreason.tasks.toy import (
    MAX_VALUE,
    ToyTask,
    compute_steps,
    extract_boxed,
    parse_question,
    recheck_lines,
    split_of,
)


@pytest.fixture(scope="module")
def task():
    return ToyTask()


def test_problems_are_deterministic_from_seed(task):
    first = task.problems(50, split="train", seed=3)
    assert first == task.problems(50, split="train", seed=3)
    assert first != task.problems(50, split="train", seed=4)


def test_splits_are_disjoint_and_keyed_by_question(task):
    train = task.problems(700, split="train", seed=0)
    test = task.problems(700, split="test", seed=0)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question) == "train" for p in train)
    assert all(split_of(p.question) == "test" for p in test)


def test_problem_fields_and_difficulty_balance(task):
    problems = task.problems(70, split="test", seed=1)
    assert len({p.question for p in problems}) == 70
    for problem in problems:
        start, operations = parse_question(problem.question)
        steps = compute_steps(start, operations)
        assert problem.difficulty == len(operations)
        assert problem.answer == str(steps[-1].result)
        assert all(0 <= step.result <= MAX_VALUE for step in steps)
        assert problem.uid.startswith("toy-") and problem.source == "toy"
    assert sorted({p.difficulty for p in problems}) == list(range(2, 9))
    assert all(sum(p.difficulty == d for p in problems) == 10 for d in range(2, 9))


@pytest.mark.parametrize("bad, name", [({"min_ops": 0}, "min_ops"), ({"min_ops": 4, "max_ops": 3}, "max_ops")])
def test_bad_construction_names_the_argument(bad, name):
    with pytest.raises(ValueError, match=name):
        ToyTask(**bad)


def test_bad_split_raises(task):
    with pytest.raises(ValueError, match="split"):
        task.problems(1, split="validation")


@pytest.mark.parametrize(
    "response, correct",
    [
        ("So the answer is \\boxed{36}.", True),
        ("\\boxed{12} then \\boxed{ 36 }", True),
        ("\\boxed{36} no wait \\boxed{35}", False),
        ("So the answer is 36.", False),
        ("\\boxed{36", False),
        ("\\boxed{}", False),
        ("\\boxed{{36}}", False),
        ("\x00\\boxed{\\boxed{", False),
        ("", False),
        (None, False),
        (36, False),
    ],
)
def test_checker_cases(task, response, correct):
    problem = Problem(question="q", answer="36", difficulty=2)
    assert task.is_correct(response, problem) is correct


def test_extract_boxed_balances_nested_braces():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{a} \\boxed{b{c}}") == "b{c}"
    assert extract_boxed("\\boxed{a{b}") is None
    assert extract_boxed("no box") is None


def test_verbose_trace_rechecks_never_change_the_answer(task):
    rng = random.Random(0)
    recheck_counts = set()
    for problem in task.problems(140, split="train", seed=2):
        concise = task.concise_trace(problem)
        verbose = task.verbose_trace(problem, rng)
        assert task.is_correct(concise, problem) and task.is_correct(verbose, problem)
        num_rechecks = verbose.count("Wait, let me verify step")
        assert 0 <= num_rechecks <= problem.difficulty
        assert verbose.startswith(concise[: concise.index(" So the answer")])
        assert verbose.count("\\boxed{") == 1
        for index in range(1, num_rechecks + 1):
            assert f"let me verify step {index}:" in verbose
        if num_rechecks:
            assert len(concise) < len(verbose)
        else:
            assert concise == verbose
        recheck_counts.add(num_rechecks)
    assert len(recheck_counts) >= 6


def test_answer_first_trace_boxes_the_answer_before_the_same_rechecks(task):
    problems = task.problems(60, split="train", seed=3)
    for problem, seed in zip(problems, range(60)):
        default = task.verbose_trace(problem, random.Random(seed))
        answer_first = task.verbose_trace(problem, random.Random(seed), "answer-first")
        concise = task.concise_trace(problem)
        assert answer_first.startswith(concise)
        sentences = lambda text: sorted(part.rstrip(".") for part in text.split(". "))  # noqa: E731
        assert sentences(answer_first) == sentences(default)
        assert task.is_correct(answer_first, problem)
        # whatever the re-checks say, the box before them decides
        assert task.is_correct(answer_first.replace("Yes.", "No, it is 7."), problem)
    with pytest.raises(ValueError, match="style must be one of"):
        task.verbose_trace(problems[0], random.Random(0), "answer-last")


def test_recheck_repeats_the_step_exactly(task):
    problem = task.make_problem("Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?")
    assert problem.answer == "36" and problem.difficulty == 2
    assert task.concise_trace(problem) == "Step 1: 7 + 5 = 12. Step 2: 12 * 3 = 36. So the answer is \\boxed{36}."
    steps = compute_steps(*parse_question(problem.question))
    assert recheck_lines(steps, 2) == ["Wait, let me verify step 1: 7 + 5 = 12. Yes.", "Wait, let me verify step 2: 12 * 3 = 36. Yes."]


def test_parse_question_rejects_other_text():
    with pytest.raises(ValueError, match="question"):
        parse_question("What is 2 + 2?")
