"""Grading: answer extraction and equivalence on a table of tricky cases, timeouts, threads."""

from __future__ import annotations

import threading
import time

import pytest

from effreason.grading import extract_answer, grade, is_correct, normalise_answer

EXTRACTION_CASES = [
    # (text, kind, expected)
    ("so the answer is \\boxed{42}.", "boxed", "42"),
    ("first \\boxed{1} then \\boxed{2}", "boxed", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "boxed", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "boxed", "\\{1, 2\\}"),
    ("\\fbox{7}", "boxed", "7"),
    ("$\\boxed 5$", "boxed", "5"),
    ("\\boxed{3} and a cut-off \\boxed{4", "boxed", "3"),
    ("\\boxed{}", "boxed", None),
    ("no box here 12", "boxed", None),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "gsm8k", "72"),
    ("#### 1,000.", "gsm8k", "1,000"),
    ("the total is 1,234.5 dollars, not 3", "number", "3"),
    ("we get -17.25 in the end", "number", "-17.25"),
    ("ratio 7/2", "number", "7/2"),
    ("I think \\boxed{9} #### 8 then 7", "auto", "9"),
    ("#### 8 then 7", "auto", "8"),
    ("only 7 here", "auto", "7"),
    ("no answer at all", "auto", None),
    ("", "auto", None),
    (None, "auto", None),
    (12, "auto", None),
]


@pytest.mark.parametrize("text,kind,expected", EXTRACTION_CASES)
def test_extract_answer(text, kind, expected):
    assert extract_answer(text, kind) == expected


def test_extract_answer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        extract_answer("\\boxed{1}", kind="latex")


GENEROUS_TIMEOUT_S = 20.0  # the test machine is shared: keep slow-but-valid comparisons from timing out

EQUIVALENCE_CASES = [
    # (prediction, reference, correct)
    ("42", "42", True),
    ("42", "43", False),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),            # equivalent fractions
    ("\\dfrac{1}{2}", "\\frac12", True),               # \dfrac vs \frac, brace-less
    ("\\tfrac{3}{4}", "3/4", True),
    ("0.5", "\\frac{1}{2}", True),                      # decimal vs fraction
    ("0.333333", "\\frac{1}{3}", True),                 # rounded to 6 places
    ("0.33", "\\frac{1}{3}", False),
    ("50\\%", "50", True),                              # percent
    ("50%", "0.5", True),
    ("5 \\text{ cm}", "5", True),                       # units
    ("\\text{5}", "5", True),                           # \text{} wrapper
    ("\\text{(C)}", "\\text{(C)}", True),
    ("\\$1,000", "1000", True),                         # commas in numbers, dollars
    ("1,000,000", "1000000", True),
    ("1,000", "1001", False),
    ("-3", "-3", True),                                 # negative numbers
    ("-3", "3", False),
    ("- 3", "-3", True),
    ("\\frac{-1}{2}", "-0.5", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("[1,2)", "[1, 2)", True),                          # intervals
    ("(1,2]", "[1,2]", False),
    ("\\{2, 1\\}", "\\{1,2\\}", True),                  # sets
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),  # symbolic equivalence
    ("(x+1)^2", "x^2+2x+1", True),
    ("x = 3", "3", True),
    ("3.14", "\\pi", False),
    ("10^{\\circ}", "10", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("1/0", "1", False),
    ("", "1", False),                                   # no answer
    (None, "1", False),
    (7, "7", False),                                    # not a string: odd model output
    ("}}}{{{\\frac{", "1", False),                      # garbage LaTeX
]


@pytest.mark.parametrize("prediction,reference,correct", EQUIVALENCE_CASES)
def test_is_correct_table(prediction, reference, correct):
    assert is_correct(prediction, reference, timeout_s=GENEROUS_TIMEOUT_S) is correct


@pytest.mark.parametrize(
    "prediction",
    [
        "9^{9^{9}}",                       # astronomically large power
        "99999999999!",                    # huge factorial
        "(" * 40 + "1" + ")" * 40,         # deep nesting (slow parser)
        "1+" * 5000 + "1",                 # very long
        "9" * 5000,                        # an integer too long for int()
        "\\frac{" * 300,                   # unbalanced
    ],
)
def test_pathological_input_is_bounded(prediction):
    start = time.perf_counter()
    assert is_correct(prediction, "3", timeout_s=1.0) is False
    assert time.perf_counter() - start < 5.0


def test_grade_extracts_then_compares():
    assert grade("... so \\boxed{\\dfrac{6}{8}}", "\\frac{3}{4}")
    assert not grade("I ran out of tokens", "3")
    assert grade("#### 1,234", "1234", kind="gsm8k")


def test_is_correct_validates_arguments():
    with pytest.raises(ValueError, match="reference"):
        is_correct("1", 1)
    with pytest.raises(ValueError, match="timeout_s"):
        is_correct("1", "1", timeout_s=0)


def test_grading_in_worker_threads_uses_helper_process():
    cases = [  # (prediction, reference, timeout_s, expected)
        ("\\frac{2}{4}", "0.5", GENEROUS_TIMEOUT_S, True),
        ("(x+1)^2", "x^2+2x+1", GENEROUS_TIMEOUT_S, True),
        ("9^{9^{9}}", "3", 1.0, False),
        ("4", "5", 1.0, False),
    ]
    results = {}

    def work(index, prediction, reference, timeout_s):
        results[index] = is_correct(prediction, reference, timeout_s=timeout_s)

    threads = [threading.Thread(target=work, args=(i, *case[:3])) for i, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert [results.get(i) for i in range(len(cases))] == [case[3] for case in cases]


def test_common_path_is_fast():
    """A training step grades hundreds of answers: plain numbers must not touch sympy."""
    start = time.perf_counter()
    for value in range(2000):
        is_correct(f"{value:,}", str(value))
        is_correct(str(value), str(value + 1))
    assert time.perf_counter() - start < 1.0


def test_normalise_answer():
    assert normalise_answer("  $\\left(1,2\\right)$. ") == "(1,2)"
    assert normalise_answer("\\text{ yes }") == "yes"
