"""Verifiable reasoning tasks: the built-in miniature and the problem record every dataset yields."""

from effreason.tasks.problem import Problem

__all__ = ["Problem"]
