"""Answer extraction and grading: the paper's ``correct`` for real data.

The paper grades a response by extracting the last ``\\boxed{}`` and comparing it with the
reference "numerically, then symbolically" (``../shared/PAPER.md``). Here:

* ``extract_answer(text, kind)`` pulls the final answer out of a response: the last
  ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed), GSM8K's ``#### x``, or the last
  number; ``None`` when there is none.
* ``is_correct(prediction, reference)`` compares an extracted answer with the reference. Plain
  numbers (``1,000``, ``-3.5``, ``7/2``, ``\\frac{7}{2}``, ``50\\%``) are compared exactly in
  Python; everything else goes through ``math-verify`` (LaTeX, units, sets, intervals,
  equivalent expressions), bounded by ``timeout_s`` so a pathological expression cannot hang an
  eval or a training step.
* ``grade(response, reference)`` is both in one call.

Timeouts: math-verify's own timeout uses ``signal.alarm`` and raises outside the main thread.
We disable it and bound each comparison ourselves: in the main thread with a repeating
``SIGALRM`` timer, elsewhere by sending the comparison to a helper process that is killed
and restarted when it overruns. Grading never raises on odd model output: anything that
fails, times out or cannot be parsed is "incorrect".
"""

from __future__ import annotations

import json
import logging
import re
import select
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from functools import lru_cache

DEFAULT_TIMEOUT_S = 3.0
MAX_ANSWER_CHARS = 1000  # longer "answers" are only compared as strings (also keeps int parsing small)
DECIMAL_PLACES = 6  # a decimal matches a fraction after rounding both, as math-verify does

ANSWER_KINDS = ("auto", "boxed", "gsm8k", "number")

_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*")
_GSM8K_MARKER = re.compile(r"####[ \t]*(\S+)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_LATEX_FRACTION = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")
_WRAPPERS = ("\\left", "\\right", "\\displaystyle", "$")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- extraction


def extract_answer(text, kind: str = "auto") -> str | None:
    """The final answer written in a model response, or ``None`` when there is none.

    ``kind``: ``"boxed"`` the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces
    allowed; ``\\boxed 5`` too), ``"gsm8k"`` the text after the last ``#### ``, ``"number"`` the
    last number, ``"auto"`` the first of those three that finds something. Non-string ``text``
    (odd model output) gives ``None``; an unknown ``kind`` raises ``ValueError``.
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if not isinstance(text, str):
        return None
    extractors = {"boxed": _last_boxed, "gsm8k": _last_gsm8k, "number": _last_number}
    order = ("boxed", "gsm8k", "number") if kind == "auto" else (kind,)
    for name in order:
        answer = extractors[name](text)
        if answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (braces matched) or ``\\boxed x``."""
    for match in reversed(list(_BOXED_COMMAND.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            content = _braced_content(text, start)
        else:
            content = re.match(r"[^\s$]*", text[start:]).group(0)
        if content is not None and content.strip():
            return content.strip()
    return None


def _braced_content(text: str, open_index: int) -> str | None:
    """The text between ``text[open_index] == '{'`` and its matching ``}``; None if unclosed."""
    depth = 0
    for index in range(open_index, len(text)):
        char = text[index]
        if char == "{" and text[index - 1] != "\\":
            depth += 1
        elif char == "}" and text[index - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
    return None


def _last_gsm8k(text: str) -> str | None:
    """The first token after the last ``####`` marker (GSM8K's answer line), trailing period dropped."""
    matches = _GSM8K_MARKER.findall(text)
    if not matches:
        return None
    return matches[-1].rstrip(".") or None


def _last_number(text: str) -> str | None:
    """The last number in the text (``-1,234.5``, ``7/2``), thousands separators kept."""
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


# ------------------------------------------------------------------------------------- grading


def grade(response, reference: str, kind: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """``is_correct(extract_answer(response, kind), reference)``: one response against its reference."""
    return is_correct(extract_answer(response, kind), reference, timeout_s=timeout_s)


def is_correct(prediction, reference: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an extracted answer equals the reference answer.

    Order (the paper: "numerically, then symbolically"): equal after light normalisation
    (spaces, ``$``, ``\\left``, ``\\dfrac``, a wrapping ``\\text{}``) -> True; both plain numbers
    -> exact rational comparison, with decimals rounded to 6 places and ``x%`` also matching
    ``x`` and ``x/100``; otherwise ``math_verify.verify`` on both parsed as LaTeX, stopped after
    ``timeout_s`` seconds. ``None``, non-strings, empty or timed-out predictions are incorrect.
    """
    if not isinstance(reference, str):
        raise ValueError(f"reference must be a str, got {type(reference).__name__}")
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
    if not isinstance(prediction, str):
        return False
    predicted, expected = normalise_answer(prediction), normalise_answer(reference)
    if not predicted or not expected:
        return False
    if predicted == expected:
        return True
    if len(predicted) > MAX_ANSWER_CHARS or len(expected) > MAX_ANSWER_CHARS:
        return False
    numbers = _parse_plain_number(predicted), _parse_plain_number(expected)
    if None not in numbers:
        return _numbers_equal(*numbers)
    return _symbolic_equal_bounded(predicted, expected, float(timeout_s))


def normalise_answer(answer: str) -> str:
    """Light, meaning-preserving cleanup used before any comparison.

    Drops ``$`` and ``\\$``, ``\\left``/``\\right``, ``\\displaystyle``, LaTeX spacing commands, a trailing
    period, a ``\\text{...}`` wrapping the whole answer; maps ``\\dfrac``/``\\tfrac`` to ``\\frac``
    and collapses whitespace.
    """
    text = answer.strip().replace("\\$", "")
    for wrapper in _WRAPPERS:
        text = text.replace(wrapper, "")
    text = _SPACING.sub(" ", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = " ".join(text.split()).rstrip(".").strip()
    whole_text = re.fullmatch(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", text)
    return whole_text.group(1).strip() if whole_text else text


def _parse_plain_number(text: str) -> tuple[Fraction, bool, bool] | None:
    """``(value, is_decimal, is_percent)`` for a plain number, else None.

    Plain: sign, digits with optional thousands commas, optional decimals,
    optional ``/ int`` or a ``\\frac{int}{int}``, optional ``%`` / ``\\%``.
    """
    text = text.replace(" ", "")
    is_percent = text.endswith("%")
    text = text.removesuffix("\\%").removesuffix("%")
    fraction = _LATEX_FRACTION.fullmatch(text)
    if fraction:
        sign, numerator, denominator = fraction.groups()
        text = f"{sign}{numerator}/{denominator}"
    parts = text.split("/")
    if len(parts) > 2 or not all(_PLAIN_NUMBER.fullmatch(part) for part in parts):
        return None
    values = [Fraction(part.replace(",", "")) for part in parts]
    if len(values) == 2 and values[1] == 0:
        return None
    value = values[0] / values[1] if len(values) == 2 else values[0]
    return value, "." in text, is_percent


def _numbers_equal(predicted: tuple[Fraction, bool, bool], expected: tuple[Fraction, bool, bool]) -> bool:
    """Exact comparison of two plain numbers; a percentage may also stand for value / 100."""
    (pred_value, pred_decimal, pred_percent), (ref_value, ref_decimal, ref_percent) = predicted, expected
    rounded = pred_decimal or ref_decimal
    candidates = [(pred_value, ref_value)]
    if pred_percent != ref_percent:
        scaled = (pred_value / 100, ref_value) if pred_percent else (pred_value, ref_value / 100)
        candidates.append(scaled)
    return any(_same_value(a, b, rounded) for a, b in candidates)


def _same_value(a: Fraction, b: Fraction, rounded: bool) -> bool:
    """``a == b``, or equal after rounding to ``DECIMAL_PLACES`` when a decimal was involved."""
    if a == b:
        return True
    return rounded and round(a, DECIMAL_PLACES) == round(b, DECIMAL_PLACES)


# ------------------------------------------------------------------- symbolic path with timeout


class _GradingTimeout(BaseException):
    """Raised by our SIGALRM handler; a BaseException so math-verify's ``except Exception`` lets it through."""


def _symbolic_equal_bounded(predicted: str, expected: str, timeout_s: float) -> bool:
    """``_symbolic_equal`` stopped after ``timeout_s``: a signal timer in the main thread, a helper process elsewhere."""
    _math_verify()  # import (about a second) outside the timed window
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _run_with_alarm(predicted, expected, timeout_s)
    return _HELPER.compare(predicted, expected, timeout_s)


def _run_with_alarm(predicted: str, expected: str, timeout_s: float) -> bool:
    """Run ``_symbolic_equal`` under a repeating ITIMER_REAL (repeats in case a bare except swallows one)."""
    def on_alarm(signum, frame):
        raise _GradingTimeout()

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
    try:
        return _symbolic_equal(predicted, expected)
    except _GradingTimeout:
        logger.debug("grading timed out after %.1fs", timeout_s)
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)


def _symbolic_equal(predicted: str, expected: str) -> bool:
    """math-verify's verdict (gold = reference) with its own signal timeouts disabled; errors -> False."""
    try:
        return bool(_math_verify().verify(list(_parse_latex(expected)), list(_parse_latex(predicted)), timeout_seconds=None))
    except Exception:  # math-verify and sympy raise many types on odd input
        logger.debug("math-verify failed on %r vs %r", predicted[:80], expected[:80], exc_info=True)
        return False


@lru_cache(maxsize=4096)
def _parse_latex(answer: str) -> tuple:
    """math-verify's parse of one answer, boxed so its boxed-answer extraction applies; cached (k samples share a reference)."""
    return tuple(_math_verify().parse("\\boxed{" + answer + "}", parsing_timeout=None))


@lru_cache(maxsize=1)
def _math_verify():
    """The imported ``math_verify`` module, with its one-time "timeout is disabled" warning dropped (ours replaces it)."""
    import math_verify

    def keep(record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(keep)
    return math_verify


class _HelperProcess:
    """A Python child process that grades for non-main threads; killed and restarted on overrun.

    Protocol: one JSON line ``[predicted, expected, timeout_s]`` in, one line ``1``/``0`` out.
    The child grades in its own main thread, so its alarm-based timeout applies; the parent
    also waits at most ``timeout_s`` plus a grace period and kills a child that does not answer.
    """

    STARTUP_GRACE_S = 30.0  # a fresh child imports sympy and math-verify first
    REPLY_GRACE_S = 2.0

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def compare(self, predicted: str, expected: str, timeout_s: float) -> bool:
        with self._lock:
            try:
                return self._ask(predicted, expected, timeout_s)
            except (OSError, ValueError):
                self._stop()
                return False

    def _ask(self, predicted: str, expected: str, timeout_s: float) -> bool:
        grace_s = self.STARTUP_GRACE_S if self._needs_start() else self.REPLY_GRACE_S
        process = self._running_process()
        process.stdin.write(json.dumps([predicted, expected, timeout_s]) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout_s + grace_s)
        reply = process.stdout.readline() if ready else ""
        if reply.strip() not in ("0", "1"):
            self._stop()
            return False
        return reply.strip() == "1"

    def _needs_start(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def _running_process(self) -> subprocess.Popen:
        if self._needs_start():
            command = [sys.executable, "-c", "from effreason.grading import serve_helper; serve_helper()"]
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
            )
        return self._process

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def serve_helper() -> None:
    """Entry point of the helper process: answer ``[predicted, expected, timeout_s]`` lines from stdin."""
    _math_verify()
    for line in sys.stdin:
        predicted, expected, timeout_s = json.loads(line)
        verdict = _run_with_alarm(predicted, expected, float(timeout_s))
        sys.stdout.write("1\n" if verdict else "0\n")
        sys.stdout.flush()


_HELPER = _HelperProcess()
