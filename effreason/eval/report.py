"""The evaluation report: one dict (written as ``--json``) and the table printed on stdout.

Report layout::

    {"model": DIR, "settings": {...},
     "datasets": {LABEL: metrics},                       # effreason.eval.metrics.dataset_metrics
     "baseline": {"model": DIR, "datasets": {LABEL: metrics}} or None,
     "normalised": {LABEL: {"accuracy_pct", "tokens_pct"}, "average": {...}} or None}
"""

from __future__ import annotations

import json
from pathlib import Path

from effreason.data.load import DEFAULT_GENERATED_SIZE
from effreason.eval.metrics import average_normalised, normalised


def build_report(model: str, settings: dict, datasets: dict[str, dict], baseline: dict | None = None) -> dict:
    """Assemble the report; with a ``baseline`` report (same layout) add the normalised columns (100 = baseline)."""
    report = {"model": model, "settings": settings, "datasets": datasets, "baseline": None, "normalised": None}
    if baseline is not None:
        report["baseline"] = {"model": baseline["model"], "datasets": baseline["datasets"]}
        report["normalised"] = normalised_columns(datasets, baseline["datasets"])
    return report


def normalised_columns(datasets: dict[str, dict], baseline_datasets: dict[str, dict]) -> dict:
    """``normalised`` per dataset both reports share, plus their ``average``; ValueError if they share none."""
    shared = [label for label in datasets if label in baseline_datasets]
    if not shared:
        raise ValueError(
            f"baseline has none of the evaluated datasets (evaluated {sorted(datasets)}, baseline {sorted(baseline_datasets)})"
        )
    columns = {label: normalised(datasets[label], baseline_datasets[label]) for label in shared}
    columns["average"] = average_normalised(list(columns.values()))
    return columns


def read_report(path: str | Path) -> dict:
    """A report written by ``--json`` (used as ``--baseline FILE.json``); ValueError if it is not one."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read evaluation report {path}: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("datasets"), dict):
        raise ValueError(f"{path} is not an evaluation report (no 'datasets')")
    return report


def write_report(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def settings_line(report: dict) -> str:
    """The model and how its responses were sampled, one line for above the table: two evaluations
    compare only under the same settings (the training run's table is greedy, 320 tokens, 504 problems)."""
    settings = report.get("settings") or {}
    temperature = settings.get("temperature")
    parts = [
        f"{settings.get('n')} sample(s) per problem",
        "greedy" if temperature == 0 else f"temperature {temperature}",
        f"at most {settings.get('max_new_tokens')} new tokens",
        f"seed {settings.get('seed')}",
        f"at most {settings['max_problems']} problems per dataset" if settings.get("max_problems")
        else f"every problem of a file, {DEFAULT_GENERATED_SIZE} of a generated dataset",
    ]
    if settings.get("force_answer"):
        parts.append("answer forced after the cut-off")
    if settings.get("prompt_budget"):
        parts.append(f"prompted budget {settings['prompt_budget']} tokens")
    return f"{report['model']}: " + ", ".join(parts)


def format_table(report: dict) -> str:
    """Fixed-width table: one row per dataset, indented rows per difficulty; with a baseline, its own
    accuracy and mean tokens, then the normalised columns (100 = baseline)."""
    normalised_rows = report.get("normalised") or {}
    baseline = (report.get("baseline") or {}).get("datasets", {})
    header = ["dataset", "problems", "samples", "acc %", "mean tok", "median tok", "trunc %"]
    if normalised_rows:
        header += ["base acc %", "base tok", "acc norm", "tok norm"]
    rows = []
    for label, metrics in report["datasets"].items():
        base = baseline.get(label)
        rows.append([label, str(metrics["num_problems"]), str(metrics["num_samples"]), *_stat_cells(metrics),
                     *_baseline_cells(normalised_rows, base), *_normalised_cells(normalised_rows, label)])
        for level, stats in metrics.get("by_difficulty", {}).items():
            base_level = (base or {}).get("by_difficulty", {}).get(level)
            rows.append([f"  level {level}", "", "", *_stat_cells(stats), *_baseline_cells(normalised_rows, base_level),
                         *_normalised_cells(normalised_rows, None)])
    if normalised_rows:
        rows.append(["average", "", "", "", "", "", "", "", "", *_normalised_cells(normalised_rows, "average")])
    return "\n".join([fixed_width_table(header, rows), *_budget_lines(report["datasets"])])


def _stat_cells(stats: dict) -> list[str]:
    return [f"{100 * stats['accuracy']:.1f}", f"{stats['mean_tokens']:.1f}", f"{stats['median_tokens']:.1f}",
            f"{100 * stats['truncation_rate']:.1f}"]


def _baseline_cells(normalised_rows: dict, stats: dict | None) -> list[str]:
    if not normalised_rows:
        return []
    if not stats:
        return ["", ""]
    return [f"{100 * stats['accuracy']:.1f}", f"{stats['mean_tokens']:.1f}"]


def _normalised_cells(normalised_rows: dict, label: str | None) -> list[str]:
    if not normalised_rows:
        return []
    row = normalised_rows.get(label) or {}
    return [_optional(row.get("accuracy_pct")), _optional(row.get("tokens_pct"))]


def _optional(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def fixed_width_table(header: list[str], rows: list[list[str]], *, first_column: str = "left") -> str:
    """The text table of every command (eval, the training run, the warm start): columns as wide as
    their widest cell, two spaces apart, numbers right-aligned, the first column ``left`` or ``right``."""
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    align_first = str.ljust if first_column == "left" else str.rjust
    return "\n".join(
        "  ".join([align_first(cells[0], widths[0]), *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))]).rstrip()
        for cells in [header, *rows]
    )


def _budget_lines(datasets: dict[str, dict]) -> list[str]:
    lines = []
    for label, metrics in datasets.items():
        budget = metrics.get("budget")
        if budget:
            lines.append(
                f"{label}: prompted budget {budget['budget']} tokens: {100 * budget['within_budget']:.1f}% of responses "
                f"within it, mean length {budget['length_ratio']:.2f}x the budget"
            )
    return lines
