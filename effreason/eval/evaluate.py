"""Evaluate a model on datasets: generate, grade, summarise. The library face of ``python -m effreason.eval``.

    datasets = load_datasets(["toy", "math500:MATH500.jsonl"], max_problems=100)
    report = evaluate(EvalConfig(model="runs/alpha-0.2", n=3), datasets)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from effreason.data import load_dataset, parse_spec, score_response
from effreason.models import load_checkpoint, stop_token_ids
from effreason.eval.config import EvalConfig
from effreason.eval.generation import Response, generate_responses
from effreason.eval.metrics import SampleResult, dataset_metrics
from effreason.eval.report import build_report, read_report
from effreason.tasks.problem import Problem


def dataset_labels(specs: list[str]) -> list[str]:
    """Short names for the report: the format (``gsm8k``) or ``gym:TASK``; ``FORMAT:FILESTEM`` when two share a format."""
    short = [_short_label(spec) for spec in specs]
    labels = [label if short.count(label) == 1 else f"{label}:{Path(parse_spec(spec)[1]).stem}"
              for label, spec in zip(short, specs)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"data names the same dataset twice: {specs}")
    return labels


def _short_label(spec: str) -> str:
    name, argument = parse_spec(spec)
    return f"gym:{argument}" if name == "gym" else name


def load_datasets(specs: list[str], *, max_problems: int | None = None, seed: int = 0,
                  question_field: str | None = None, answer_field: str | None = None) -> dict[str, list[Problem]]:
    """``{label: problems}`` for every spec (see :func:`effreason.data.load_dataset`)."""
    return {
        label: load_dataset(spec, limit=max_problems, seed=seed, question_field=question_field, answer_field=answer_field)
        for label, spec in zip(dataset_labels(specs), specs)
    }


def grade_responses(problems: list[Problem], responses: list[list[Response]],
                    is_correct: Callable[[str, Problem], bool]) -> list[SampleResult]:
    """One :class:`SampleResult` per response, correct when ``is_correct(text, problem)`` (for datasets,
    :func:`effreason.data.score_response` with the run's answer kind)."""
    return [
        SampleResult(problem.uid, problem.difficulty, index, response.num_tokens, response.finish_reason,
                     bool(is_correct(response.text, problem)))
        for problem, row in zip(problems, responses)
        for index, response in enumerate(row)
    ]


def evaluate_model(model_path: str, datasets: dict[str, list[Problem]], config: EvalConfig) -> dict:
    """A report (``effreason.eval.report``) of the model at ``model_path`` on ``datasets`` under ``config``'s sampling."""
    from effreason.sampler import Sampler

    model, tokenizer, folder = load_checkpoint(model_path, device=config.device, dtype=config.dtype)
    sampler = Sampler(model)
    params = config.sampling_params(stop_token_ids(model, tokenizer))
    metrics = {}
    for label, problems in datasets.items():
        responses = generate_responses(sampler, tokenizer, problems, params, prompt_budget=config.prompt_budget,
                                       force_answer=config.force_answer,
                                       context_length=getattr(model.config, "max_position_embeddings", None),
                                       progress=config.progress)
        graded = grade_responses(problems, responses, functools.partial(score_response, answer_kind=config.answer_kind))
        metrics[label] = dataset_metrics(graded, prompt_budget=config.prompt_budget)
    return build_report(str(folder), config.settings(), metrics)


def baseline_report(baseline: str, datasets: dict[str, list[Problem]], config: EvalConfig) -> dict:
    """The baseline's report: read from a ``--json`` file, or evaluated now with the same settings.

    The prompted budget and forced answers are what baselines are compared *against*, so the
    baseline model itself is evaluated with plain prompts and no forcing.
    """
    if baseline.endswith(".json"):
        return read_report(baseline)
    plain = EvalConfig(**{**vars(config), "prompt_budget": None, "force_answer": False})
    return evaluate_model(baseline, datasets, plain)


def evaluate(config: EvalConfig, datasets: dict[str, list[Problem]]) -> dict:
    """The full report of ``config.model``, with normalised columns when ``config.baseline`` is set."""
    report = evaluate_model(config.model, datasets, config)
    if config.baseline is None:
        return report
    baseline = baseline_report(config.baseline, datasets, config)
    return build_report(report["model"], report["settings"], report["datasets"], baseline)
