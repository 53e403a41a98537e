"""PNG plots of a run: training curves over steps, and accuracy vs tokens before and after."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


CURVES = [("reward_mean", "reward"), ("loss", "loss"), ("accuracy", "rollout accuracy"),
          ("mean_tokens", "mean response tokens"), ("alpha", "alpha")]


def plot_training_curves(metrics: list[dict], path: Path) -> Path:
    """Per step, each of ``CURVES`` that the run logs (reward and alpha: RL only): steps without a value are gaps."""
    plt = _pyplot()
    steps = [row["step"] for row in metrics]
    panels = [(key, title) for key, title in CURVES if any(row.get(key) is not None for row in metrics)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (key, title) in zip(axes, panels):
        axis.plot(steps, [row.get(key, None) if row.get(key) is not None else float("nan") for row in metrics], marker=".")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_accuracy_vs_tokens(before: dict, after: dict, path: Path) -> Path:
    """Accuracy against mean tokens, one point per difficulty (and overall), before and after training."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for summary, label, colour in ((before, "before (warm start)", "tab:gray"), (after, "after RL", "tab:blue")):
        levels = summary.get("by_difficulty", {})
        axis.scatter([v["mean_tokens"] for v in levels.values()], [100 * v["accuracy"] for v in levels.values()], color=colour, alpha=0.6, s=18)
        for level, values in levels.items():
            axis.annotate(level, (values["mean_tokens"], 100 * values["accuracy"]), fontsize=7, color=colour)
        axis.scatter([summary["mean_tokens"]], [100 * summary["accuracy"]], color=colour, marker="*", s=160, label=f"{label}: all")
    for level in set(before.get("by_difficulty", {})) & set(after.get("by_difficulty", {})):
        first, second = before["by_difficulty"][level], after["by_difficulty"][level]
        axis.annotate("", xy=(second["mean_tokens"], 100 * second["accuracy"]), xytext=(first["mean_tokens"], 100 * first["accuracy"]),
                      arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.3))
    axis.set_xlabel("mean response tokens (greedy)")
    axis.set_ylabel("accuracy (%)")
    axis.set_title("accuracy vs tokens (numbers: difficulty)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
