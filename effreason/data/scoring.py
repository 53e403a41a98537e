"""Whether a response solves a problem, with the scorer its dataset calls for."""

from __future__ import annotations

from effreason.data.gym import SOURCE_PREFIX, gym_is_correct
from effreason.grading import grade
from effreason.tasks.problem import Problem
from effreason.tasks.toy import ToyTask

_TOY = ToyTask()


def score_response(response, problem: Problem) -> bool:
    """True when ``response`` answers ``problem`` correctly.

    The built-in ``toy`` task uses its exact boxed-answer check, ``gym:<task>`` problems their
    reasoning-gym scorer, everything else the paper's rule: the last ``\\boxed{}`` compared with
    the reference by :func:`effreason.grading.is_correct`. Never raises on odd model output.
    """
    if problem.source == _TOY.source:
        return _TOY.is_correct(response, problem)
    if problem.source.startswith(SOURCE_PREFIX):
        return gym_is_correct(response, problem)
    return grade(response, problem.answer, kind="boxed")
