"""Accuracy-versus-tokens plots: one panel per dataset, one point per model, the reference starred.

Used by ``python -m effreason.eval --plot`` (the model and its baseline) and by
``python -m effreason.sweep`` (the Pareto plot: one point per trained setting, the warm start starred,
a panel per dataset and per difficulty level).
"""

from __future__ import annotations

from pathlib import Path

PANELS_PER_ROW = 4


def plot_tradeoff(points: list[dict], path: str | Path, *, reference: str | None = None, title: str = "") -> None:
    """Save a figure of ``accuracy`` (%) against ``mean_tokens``, one panel per dataset.

    ``points``: ``{"label", "dataset", "accuracy", "mean_tokens"}`` dicts (accuracy in [0, 1]),
    optionally with a ``"series"`` name: the points of one series (e.g. the alpha sweep, or one
    recipe) share a colour and are joined by a line in the order given; other points are grey.
    The point labelled ``reference`` is drawn as a star. Panels wrap after ``PANELS_PER_ROW``.
    """
    if not points:
        raise ValueError("points must not be empty")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(point["dataset"] for point in points))
    columns = min(len(datasets), PANELS_PER_ROW)
    rows = -(-len(datasets) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4 * rows), squeeze=False)
    series = list(dict.fromkeys(point["series"] for point in points if point.get("series")))
    colours = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(series)}
    for axis in axes.flat[len(datasets):]:
        axis.set_visible(False)
    for axis, dataset in zip(axes.flat, datasets):
        _draw_panel(axis, [p for p in points if p["dataset"] == dataset], reference, colours)
        axis.set_title(dataset)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _draw_panel(axis, points: list[dict], reference: str | None, colours: dict) -> None:
    tokens = [point["mean_tokens"] for point in points]
    accuracy = [100 * point["accuracy"] for point in points]
    for series in dict.fromkeys(point.get("series") for point in points if point.get("series")):
        members = [index for index, point in enumerate(points) if point.get("series") == series]
        axis.plot([tokens[i] for i in members], [accuracy[i] for i in members], color=colours[series], alpha=0.4, zorder=1)
    for index, (point, x, y) in enumerate(zip(points, tokens, accuracy)):
        is_reference = point["label"] == reference
        color = "tab:red" if is_reference else colours.get(point.get("series"), "tab:gray")
        axis.scatter([x], [y], marker="*" if is_reference else "o", s=160 if is_reference else 40, color=color, zorder=2)
        label_offset = (5, 5) if index % 2 == 0 else (5, -11)  # alternate so neighbours' labels do not overlap
        axis.annotate(point["label"], (x, y), textcoords="offset points", xytext=label_offset, fontsize=8)
    axis.set_xlabel("mean response tokens")
    axis.set_ylabel("accuracy (%)")
    axis.grid(alpha=0.3)
