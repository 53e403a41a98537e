"""Accuracy-versus-tokens plots: one panel per dataset, one point per model, the reference starred.

Used by ``python -m effreason.eval --plot`` (the model and its baseline) and by
``python -m effreason.sweep`` (the Pareto plot: one point per alpha, the warm start starred).
"""

from __future__ import annotations

from pathlib import Path


def plot_tradeoff(points: list[dict], path: str | Path, *, reference: str | None = None, title: str = "") -> None:
    """Save a figure of ``accuracy`` (%) against ``mean_tokens``, one panel per dataset.

    ``points``: ``{"label", "dataset", "accuracy", "mean_tokens"}`` dicts (accuracy in [0, 1]);
    points of one dataset are joined in the order given. The point labelled ``reference`` is
    drawn as a star.
    """
    if not points:
        raise ValueError("points must not be empty")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(point["dataset"] for point in points))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        _draw_panel(axis, [p for p in points if p["dataset"] == dataset], reference)
        axis.set_title(dataset)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _draw_panel(axis, points: list[dict], reference: str | None) -> None:
    tokens = [point["mean_tokens"] for point in points]
    accuracy = [100 * point["accuracy"] for point in points]
    axis.plot(tokens, accuracy, color="0.7", zorder=1)
    for point, x, y in zip(points, tokens, accuracy):
        is_reference = point["label"] == reference
        axis.scatter([x], [y], marker="*" if is_reference else "o", s=160 if is_reference else 40,
                     color="tab:red" if is_reference else "tab:blue", zorder=2)
        axis.annotate(point["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel("mean response tokens")
    axis.set_ylabel("accuracy (%)")
    axis.grid(alpha=0.3)
