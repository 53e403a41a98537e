"""Whether a response solves a problem, with the scorer its dataset calls for."""

from __future__ import annotations

from effreason.data.gym import SOURCE_PREFIX, gym_is_correct
from effreason.grading import grade
from effreason.tasks.problem import Problem
from effreason.tasks.toy import ToyTask

_TOY = ToyTask()


DEFAULT_ANSWER_KIND = "boxed"
"""The paper's rule: the response's last ``\\boxed{}`` is its answer."""


def score_response(response, problem: Problem, answer_kind: str = DEFAULT_ANSWER_KIND) -> bool:
    """True when ``response`` answers ``problem`` correctly: the one grading of training, evaluation,
    the sweep, the baselines and the warm start.

    The built-in ``toy`` task uses its exact boxed-answer check, ``gym:<task>`` problems their
    reasoning-gym scorer, everything else the answer extracted by ``answer_kind`` (default the
    last ``\\boxed{}``; ``auto``, ``gsm8k``, ``number``: see :func:`effreason.grading.extract_answer`)
    compared with the reference by :func:`effreason.grading.is_correct`. Never raises on odd model output.
    """
    if problem.source == _TOY.source:
        return _TOY.is_correct(response, problem)
    if problem.source.startswith(SOURCE_PREFIX):
        return gym_is_correct(response, problem)
    return grade(response, problem.answer, kind=answer_kind)
