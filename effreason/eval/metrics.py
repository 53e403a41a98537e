"""Per-dataset metrics of one evaluation: the numbers the paper's tables report.

Each graded sample is a :class:`SampleResult`. ``dataset_metrics`` turns a dataset's samples into

* ``accuracy``: pass@1 averaged over the ``n`` samples of every problem (the paper's "pass rate
  averaged over samples"): ``mean_i mean_j correct_ij``, every problem weighted equally;
* ``mean_tokens`` / ``median_tokens``: response tokens over all samples;
* ``truncation_rate``: share of samples that hit the token limit (``finish_reason == "length"``);
* ``by_difficulty``: the same three per difficulty level, when the data has levels;
* ``budget``: with a prompted token budget ``X``, the share of responses within ``X`` tokens
  and ``mean_tokens / X`` (how far lengths follow the budget).

``normalised`` gives the paper's columns against a baseline: ``100 * model / baseline``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class SampleResult:
    """One graded response: problem id and level, sample index, length, how it ended, correctness."""

    uid: str
    difficulty: int | None
    sample_index: int
    num_tokens: int
    finish_reason: str
    correct: bool


def dataset_metrics(samples: list[SampleResult], *, prompt_budget: int | None = None) -> dict:
    """Accuracy, token statistics, truncation rate, per-difficulty breakdown (and budget adherence)."""
    if not samples:
        raise ValueError("samples must not be empty")
    metrics = {
        "num_problems": len({sample.uid for sample in samples}),
        "num_samples": len(samples),
        **_summary(samples),
    }
    levels = sorted({s.difficulty for s in samples if s.difficulty is not None})
    if levels:
        metrics["by_difficulty"] = {str(level): _summary([s for s in samples if s.difficulty == level]) for level in levels}
    if prompt_budget is not None:
        metrics["budget"] = budget_adherence(samples, prompt_budget)
    return metrics


def _summary(samples: list[SampleResult]) -> dict:
    lengths = [sample.num_tokens for sample in samples]
    return {
        "accuracy": pass_at_1(samples),
        "mean_tokens": statistics.fmean(lengths),
        "median_tokens": float(statistics.median(lengths)),
        "truncation_rate": sum(s.finish_reason == "length" for s in samples) / len(samples),
    }


def pass_at_1(samples: list[SampleResult]) -> float:
    """``mean over problems of (correct samples / samples)``: pass@1 estimated from n samples each."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for sample in samples:
        per_problem[sample.uid].append(sample.correct)
    return statistics.fmean(sum(flags) / len(flags) for flags in per_problem.values())


def budget_adherence(samples: list[SampleResult], budget: int) -> dict:
    """``within_budget``: share of responses with ``num_tokens <= budget``; ``length_ratio``: mean tokens / budget."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    lengths = [sample.num_tokens for sample in samples]
    return {
        "budget": budget,
        "within_budget": sum(length <= budget for length in lengths) / len(lengths),
        "length_ratio": statistics.fmean(lengths) / budget,
    }


def normalised(metrics: dict, baseline: dict) -> dict:
    """The paper's normalised columns: ``100 * accuracy / baseline accuracy`` and the same for mean tokens.

    A zero baseline value gives ``None`` (undefined ratio).
    """
    return {
        "accuracy_pct": _percent(metrics["accuracy"], baseline["accuracy"]),
        "tokens_pct": _percent(metrics["mean_tokens"], baseline["mean_tokens"]),
    }


def _percent(value: float, reference: float) -> float | None:
    return 100.0 * value / reference if reference else None


def average_normalised(rows: list[dict]) -> dict:
    """Mean of the normalised columns over datasets (the paper's "averaged and normalised"), skipping undefined ones."""
    averaged = {}
    for key in ("accuracy_pct", "tokens_pct"):
        values = [row[key] for row in rows if row.get(key) is not None]
        averaged[key] = statistics.fmean(values) if values else None
    return averaged
