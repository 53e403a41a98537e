"""The built-in miniature task: chains of small-integer arithmetic operations.

A problem starts from a number and applies ``num_ops`` numbered operations (add or subtract a
digit 1..9, multiply by 2 or 3), every intermediate result kept in ``0..99`` so a tiny model
can learn the arithmetic. Difficulty is the number of operations. Problems are deterministic
from a seed, and the train/test split is a fixed function of the question text (a SHA-256
hash), so the two splits never share a question whatever seeds are used.

Example question and its two trace styles::

    Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?
    concise: Step 1: 7 + 5 = 12. Step 2: 12 * 3 = 36. So the answer is \\boxed{36}.
    verbose: Step 1: 7 + 5 = 12. Step 2: 12 * 3 = 36. Wait, let me verify step 1: 7 + 5 = 12. Yes.
             So the answer is \\boxed{36}.

The verbose trace over-thinks like an R1-distilled model: after the needed steps it re-checks
steps 1..R in order, with R drawn uniformly from ``0..num_ops``. The re-checks repeat exact
computations, so they never change the answer: they are pure length for RL to remove.

A model can still slip while re-checking (a wrong copy of the answer after many re-checks), so on
this trace style correctness and length are coupled. The ``answer-first`` style boxes the answer
right after the needed steps and re-checks afterwards::

    answer-first: Step 1: 7 + 5 = 12. Step 2: 12 * 3 = 36. So the answer is \\boxed{36}.
                  Wait, let me verify step 1: 7 + 5 = 12. Yes.

The grade reads the last box, which the re-checks never contain, so whatever they say cannot change
correctness (only a response cut off before its EOS can): the second miniature, on which length
drift can only come from the objective (the loss aggregation), not from the reward.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from effreason.tasks.problem import Problem

MAX_VALUE = 99
START_RANGE = (1, 20)
OPERAND_RANGE = (1, 9)
MULTIPLIER_RANGE = (2, 3)
TEST_SPLIT_MODULUS = 10  # one question in ten (by hash) belongs to the test split

OPERATION_WORDS = {"+": "add", "-": "subtract", "*": "multiply by"}
WORD_TO_SYMBOL = {word: symbol for symbol, word in OPERATION_WORDS.items()}
SPLITS = ("train", "test")
TRACE_STYLES = ("recheck-then-answer", "answer-first")

_QUESTION_START = re.compile(r"^Start with (\d+)\.")
_QUESTION_STEP = re.compile(r"Step (\d+): (add|subtract|multiply by) (\d+)\.")


@dataclass(frozen=True)
class Step:
    """One computed operation: ``left op operand = result``."""

    left: int
    symbol: str
    operand: int
    result: int

    def equation(self) -> str:
        return f"{self.left} {self.symbol} {self.operand} = {self.result}"


def apply_operation(value: int, symbol: str, operand: int) -> int:
    """``value (+|-|*) operand`` on integers."""
    if symbol == "+":
        return value + operand
    if symbol == "-":
        return value - operand
    if symbol == "*":
        return value * operand
    raise ValueError(f"symbol must be one of + - *, got {symbol!r}")


def feasible_operations(value: int) -> list[tuple[str, int]]:
    """Every (symbol, operand) whose result stays in ``0..MAX_VALUE``."""
    low, high = OPERAND_RANGE
    options = [("+", d) for d in range(low, high + 1) if value + d <= MAX_VALUE]
    options += [("-", d) for d in range(low, high + 1) if value - d >= 0]
    if value >= 2:
        options += [("*", d) for d in range(MULTIPLIER_RANGE[0], MULTIPLIER_RANGE[1] + 1) if value * d <= MAX_VALUE]
    return options


def sample_chain(rng: random.Random, num_ops: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and ``num_ops`` operations: the operation kind uniform among the feasible
    kinds, then the operand uniform among the feasible operands of that kind."""
    value = rng.randint(*START_RANGE)
    start, operations = value, []
    for _ in range(num_ops):
        options = feasible_operations(value)
        symbol = rng.choice(sorted({s for s, _ in options}))
        operand = rng.choice([d for s, d in options if s == symbol])
        operations.append((symbol, operand))
        value = apply_operation(value, symbol, operand)
    return start, operations


def format_question(start: int, operations: list[tuple[str, int]]) -> str:
    """``Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?``"""
    steps = [f"Step {i}: {OPERATION_WORDS[s]} {d}." for i, (s, d) in enumerate(operations, start=1)]
    return " ".join([f"Start with {start}.", *steps, "What is the result?"])


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """Inverse of :func:`format_question`; ``ValueError`` naming ``question`` if it is not one."""
    start_match = _QUESTION_START.match(question)
    steps = _QUESTION_STEP.findall(question)
    numbered = [int(index) for index, _, _ in steps] == list(range(1, len(steps) + 1))
    if start_match is None or not steps or not numbered:
        raise ValueError(f"question is not a toy chain question: {question!r}")
    operations = [(WORD_TO_SYMBOL[word], int(operand)) for _, word, operand in steps]
    return int(start_match.group(1)), operations


def compute_steps(start: int, operations: list[tuple[str, int]]) -> list[Step]:
    """The chain evaluated left to right, one :class:`Step` per operation."""
    steps, value = [], start
    for symbol, operand in operations:
        result = apply_operation(value, symbol, operand)
        steps.append(Step(value, symbol, operand, result))
        value = result
    return steps


def question_digest(question: str) -> str:
    """SHA-256 hex digest of the question text: the split key and the uid."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()


def split_of(question: str) -> str:
    """``"test"`` for one question in ``TEST_SPLIT_MODULUS`` (by hash), else ``"train"``."""
    return "test" if int(question_digest(question)[:12], 16) % TEST_SPLIT_MODULUS == 0 else "train"


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` with nested braces balanced, or None
    when there is none or its braces never close."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for position in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[begin:position]
    return None


def answer_line(answer: str) -> str:
    return f"So the answer is \\boxed{{{answer}}}."


def step_lines(steps: list[Step]) -> list[str]:
    return [f"Step {i}: {step.equation()}." for i, step in enumerate(steps, start=1)]


def recheck_lines(steps: list[Step], num_rechecks: int) -> list[str]:
    """Re-checks of steps ``1..num_rechecks`` in order; each repeats the exact computation."""
    return [f"Wait, let me verify step {i}: {steps[i - 1].equation()}. Yes." for i in range(1, num_rechecks + 1)]


class ToyTask:
    """Chains of ``min_ops..max_ops`` arithmetic operations; difficulty = number of operations."""

    source = "toy"

    def __init__(self, min_ops: int = 2, max_ops: int = 8):
        if min_ops < 1:
            raise ValueError(f"min_ops must be >= 1, got {min_ops}")
        if max_ops < min_ops:
            raise ValueError(f"max_ops must be >= min_ops ({min_ops}), got {max_ops}")
        self.min_ops = min_ops
        self.max_ops = max_ops

    @property
    def difficulties(self) -> list[int]:
        return list(range(self.min_ops, self.max_ops + 1))

    def problems(self, n: int, *, split: str = "train", seed: int = 0) -> list[Problem]:
        """``n`` distinct problems of ``split``, difficulties cycling through ``min_ops..max_ops``
        so every level gets ``n / levels`` problems; the same (n, split, seed) gives the same list."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"toy-{split}-{seed}")
        seen: set[str] = set()
        problems = []
        while len(problems) < n:
            num_ops = self.difficulties[len(problems) % len(self.difficulties)]
            question = format_question(*sample_chain(rng, num_ops))
            if question in seen or split_of(question) != split:
                continue
            seen.add(question)
            problems.append(self.make_problem(question))
        return problems

    def make_problem(self, question: str) -> Problem:
        """The :class:`Problem` for a toy question (answer computed from the question)."""
        steps = compute_steps(*parse_question(question))
        return Problem(
            question=question,
            answer=str(steps[-1].result),
            difficulty=len(steps),
            source=self.source,
            uid=f"toy-{question_digest(question)[:16]}",
        )

    def is_correct(self, response_text: str, problem: Problem) -> bool:
        """Last ``\\boxed{...}`` of the response equals the reference answer exactly (surrounding
        whitespace ignored). Never raises: anything unparsable is simply wrong."""
        if not isinstance(response_text, str):
            return False
        boxed = extract_boxed(response_text)
        return boxed is not None and boxed.strip() == str(problem.answer).strip()

    def concise_trace(self, problem: Problem) -> str:
        """The needed steps, then the boxed answer."""
        steps = compute_steps(*parse_question(problem.question))
        return " ".join([*step_lines(steps), answer_line(str(steps[-1].result))])

    def verbose_trace(self, problem: Problem, rng: random.Random, style: str = "recheck-then-answer") -> str:
        """The needed steps, ``R ~ Uniform{0..num_ops}`` redundant re-checks, then the boxed answer;
        with ``style="answer-first"`` the boxed answer comes before the re-checks."""
        if style not in TRACE_STYLES:
            raise ValueError(f"style must be one of {TRACE_STYLES}, got {style!r}")
        steps = compute_steps(*parse_question(problem.question))
        rechecks = recheck_lines(steps, rng.randint(0, len(steps)))
        answer = answer_line(str(steps[-1].result))
        lines = [*step_lines(steps), answer, *rechecks] if style == "answer-first" else [*step_lines(steps), *rechecks, answer]
        return " ".join(lines)
