"""Evaluation: ``python -m effreason.eval`` and the pieces the sweep reuses.

Files: ``config.py`` (EvalConfig), ``generation.py``
(prompts, sampler, cut-off and prompted-budget baselines), ``metrics.py`` (accuracy, tokens,
truncation, per difficulty, normalised), ``report.py`` (JSON report and table), ``plots.py``
(accuracy vs tokens), ``evaluate.py`` (the whole pipeline), ``cli.py`` (the command).
"""

from effreason.eval.config import EvalConfig
from effreason.eval.evaluate import evaluate, evaluate_model, load_datasets
from effreason.eval.metrics import SampleResult, dataset_metrics
from effreason.eval.report import build_report, format_table, read_report, write_report

__all__ = [
    "EvalConfig", "SampleResult", "build_report", "dataset_metrics", "evaluate", "evaluate_model",
    "format_table", "load_datasets", "read_report", "write_report",
]
