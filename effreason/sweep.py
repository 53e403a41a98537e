"""``python -m effreason.sweep``: a family of models on one trade-off plot: the paper's alphas, or recipes.

    python -m effreason.sweep --alphas 0,0.05,0.1,0.2,0.4 --out runs/sweep
    python -m effreason.sweep --recipes paper:0.1,paper:0.2,dler,laser-d,alp,thinkprune,gfpo,shorterbetter \\
        --out runs/family --temperature 0 --max-new-tokens 320 --max-problems 504
    python -m effreason.sweep --alphas 0,0.2 --out runs/sweep --data math500:MATH500.jsonl \\
        --model MODEL_DIR -- --preset paper-1.5b          # flags after -- go to effreason.train

Every setting trains from the same warm start (``--model``, default the built-in one) through
:func:`effreason.train.run`: an alpha into ``OUT/alpha-<a>/``, a recipe (``effreason.recipes``;
``NAME:VALUE`` sets its knob, ``paper:0.1`` is alpha 0.1) into ``OUT/<name>[-<value>]/``. With
``--recipes`` every run stops at the same ``--rollout-token-budget`` of sampled response tokens
(default ``DEFAULT_ROLLOUT_TOKEN_BUDGET``, what the paper's run at the default settings samples in
its 40 steps), so a recipe that samples more per step (GFPO's larger groups, DLER's refills) takes
fewer steps. Then the warm start and every trained model are evaluated on the same held-out
problems (:mod:`effreason.eval`). The reviewers' training-free baselines join the same table and
plot: ``--cutoffs 64,128`` (the warm start cut at B tokens, then forced to answer) and
``--prompt-budgets 64,128`` (the warm start asked to answer in fewer than X tokens). Written to
``OUT/``: ``sweep.json`` (every report, the normalised columns, each run's steps and sampled
tokens), ``sweep.md`` (the tables, also printed: overall and per difficulty level) and
``pareto.png`` (accuracy vs mean tokens, one point per model, the warm start starred; a panel per
dataset and per difficulty level).

Resumable: a setting whose run folder has ``summary.json`` is not retrained (an interrupted one
resumes from its checkpoint), and an evaluation is reused from ``OUT/evals/`` when its settings
are unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from effreason.data import SPEC_HELP
from effreason.models import resolve_model_dir
from effreason.recipes import RECIPES, RecipeSpec, parse_recipe_specs
from effreason.eval.config import EvalConfig
from effreason.eval.evaluate import evaluate_model, load_datasets
from effreason.eval.plots import plot_tradeoff
from effreason.eval.report import normalised_columns, read_report, write_report
from effreason.tasks.problem import Problem

WARM_START = "warm start"
RESERVED_TRAIN_FLAGS = ("alpha", "recipe", "rollout_token_budget", "out", "resume", "model")  # set by the sweep for every setting
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)
DEFAULT_ROLLOUT_TOKEN_BUDGET = 450_000
"""Response tokens each run of a ``--recipes`` sweep samples: about what the paper's recipe samples in its
40 default steps on the miniature (16 prompts x 8 samples per step, answers shortening from ~105 to ~80 tokens)."""
BUDGETED_STEP_CAP = 120
"""``--steps`` of a budgeted run: a cap the budget ends first (at 450,000 tokens, only for answers under 30 tokens
on average); it also sizes the LR warmup, 3% of it: 4 optimizer steps instead of the 40-step run's 2."""


def parse_token_counts(text: str) -> tuple[int, ...]:
    """``"64,128"`` -> ``(64, 128)``: distinct positive token counts (cut-offs, prompted budgets)."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"token counts must be comma-separated integers, got {text!r}") from None
    if not counts or len(set(counts)) != len(counts) or min(counts) < 1:
        raise ValueError(f"token counts must be distinct integers >= 1, got {text!r}")
    return counts


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"0,0.05,0.1"`` -> ``(0.0, 0.05, 0.1)``; ValueError naming ``alphas`` for bad or repeated values."""
    try:
        alphas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"alphas must be comma-separated numbers, got {text!r}") from None
    if not alphas or len(set(alphas)) != len(alphas) or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas must be distinct numbers in [0, 1], got {text!r}")
    return alphas


@dataclass(frozen=True)
class Setting:
    """One trained model of the sweep: its row ``label``, run ``folder``, training settings and plot ``series``."""

    label: str
    folder: str
    train: dict
    series: str


@dataclass
class SweepConfig:
    """One sweep: the alphas and recipes, the shared warm start and budget, the held-out evaluation, extra training settings."""

    out: str
    alphas: tuple[float, ...] = ()
    recipes: tuple[RecipeSpec, ...] = ()
    rollout_token_budget: int | None = None
    model: str | None = None
    data: list[str] = field(default_factory=lambda: ["toy"])
    max_problems: int | None = None
    n: int = 1
    temperature: float = 0.6
    max_new_tokens: int = 32768
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    cutoffs: tuple[int, ...] = ()
    prompt_budgets: tuple[int, ...] = ()
    train_args: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.alphas and not self.recipes:
            raise ValueError("alphas or recipes: give at least one setting to train")
        if self.alphas:
            parse_alphas(",".join(str(alpha) for alpha in self.alphas))
        if self.recipes:
            parse_recipe_specs(",".join(spec.label for spec in self.recipes))
        reserved = sorted(set(self.train_args) & set(RESERVED_TRAIN_FLAGS))
        if reserved:
            raise ValueError(f"train_args must not set {reserved}: the sweep sets them "
                             "(use --model, --alphas, --recipes, --rollout-token-budget, --out)")
        if self.rollout_token_budget is not None and self.rollout_token_budget < 1:
            raise ValueError(f"rollout_token_budget must be >= 1, got {self.rollout_token_budget}")

    @property
    def token_budget(self) -> int | None:
        """Sampled response tokens per run: as given, else ``DEFAULT_ROLLOUT_TOKEN_BUDGET`` with recipes, else none (``--steps``)."""
        if self.rollout_token_budget is not None or not self.recipes:
            return self.rollout_token_budget
        return DEFAULT_ROLLOUT_TOKEN_BUDGET

    def settings(self) -> list[Setting]:
        """The trained models, alphas first: an alpha is the paper's reward at that alpha."""
        alphas = [Setting(f"alpha={alpha:g}", f"alpha-{alpha:g}", {"alpha": alpha}, "alpha") for alpha in self.alphas]
        recipes = [Setting(spec.label, spec.folder, spec.settings(), spec.name) for spec in self.recipes]
        return alphas + recipes

    def train_settings(self, setting: Setting, run_dir: Path, warm_start: str) -> dict:
        """The training run of ``setting``: no evaluation of its own, the budget (with a step cap the budget
        ends first), the flags after ``--``, then the setting itself."""
        budget = self.token_budget
        budgeted = {} if budget is None else {"rollout_token_budget": budget, "steps": BUDGETED_STEP_CAP}
        return {"eval_problems": 0, **budgeted, **self.train_args, **setting.train, "out": str(run_dir), "model": warm_start}

    def eval_config(self, model: str, **baseline_settings) -> EvalConfig:
        """The shared evaluation settings for ``model``; ``baseline_settings`` override them for a baseline."""
        settings = dict(model=model, data=self.data, n=self.n, temperature=self.temperature,
                        max_new_tokens=self.max_new_tokens, seed=self.seed, max_problems=self.max_problems,
                        device=self.device, dtype=self.dtype)
        return EvalConfig(**{**settings, **baseline_settings})

    def baselines(self) -> dict[str, dict]:
        """``{name: EvalConfig overrides}`` of the training-free baselines, evaluated on the warm start."""
        cut = {f"cut-off {b}": {"max_new_tokens": b, "force_answer": True} for b in self.cutoffs}
        prompted = {f"prompt budget {x}": {"prompt_budget": x} for x in self.prompt_budgets}
        return {**cut, **prompted}


def is_finished(run_dir: Path) -> bool:
    """A run is finished once the trainer wrote its ``summary.json`` (it does so last)."""
    return (run_dir / "summary.json").is_file()


def train_setting(config: SweepConfig, setting: Setting, warm_start: str) -> Path:
    """Train one setting into its run folder unless already finished; an interrupted run resumes."""
    from effreason.train import run
    from effreason.train.checkpoint import latest_checkpoint
    from effreason.train.config import resolve_config

    run_dir = Path(config.out) / setting.folder
    if is_finished(run_dir):
        return run_dir
    if latest_checkpoint(run_dir) is not None:
        return run(resolve_config({"resume": str(run_dir)}))
    return run(resolve_config(config.train_settings(setting, run_dir, warm_start)))


def run_summary(run_dir: Path) -> dict:
    """Steps taken and response tokens sampled by a finished run (from its ``summary.json``)."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {"steps": summary.get("steps"), "rollout_tokens": summary.get("rollout_tokens")}


def evaluate_cached(name: str, datasets: dict[str, list[Problem]], eval_config: EvalConfig, out: str) -> dict:
    """The report of ``eval_config.model``, reused from ``OUT/evals/NAME.json`` when made of the same
    checkpoint with the same settings."""
    cache = Path(out) / "evals" / f"{name.replace(' ', '-')}.json"
    if cache.is_file():
        cached = read_report(cache)
        same_model = cached.get("model") == str(resolve_model_dir(eval_config.model))
        if same_model and cached.get("settings") == json.loads(json.dumps(eval_config.settings())):
            return cached
    report = evaluate_model(eval_config.model, datasets, eval_config)
    write_report(report, cache)
    return report


def default_warm_start() -> str:
    from effreason.warmstart import warmstart_dir

    return str(warmstart_dir())


def run_sweep(config: SweepConfig) -> dict:
    """Train and evaluate every setting; write ``sweep.json``, ``sweep.md``, ``pareto.png``; return the sweep record."""
    out = Path(config.out)
    warm_start = config.model or default_warm_start()
    datasets = load_datasets(config.data, max_problems=config.max_problems, seed=config.seed)
    reports = {WARM_START: evaluate_cached(WARM_START, datasets, config.eval_config(warm_start), config.out)}
    for name, overrides in config.baselines().items():
        reports[name] = evaluate_cached(name, datasets, config.eval_config(warm_start, **overrides), config.out)
    runs, series = {}, {}
    for setting in config.settings():
        run_dir = train_setting(config, setting, warm_start)
        reports[setting.label] = evaluate_cached(setting.folder, datasets, config.eval_config(str(run_dir)), config.out)
        runs[setting.label], series[setting.label] = run_summary(run_dir), setting.series
    record = sweep_record(reports, runs)
    write_report(record, out / "sweep.json")
    tables = "\n\n".join([format_sweep_table(record), *format_difficulty_tables(record)])
    (out / "sweep.md").write_text(tables + "\n")
    title = "accuracy vs tokens" + (f", {config.token_budget:,} sampled tokens per run" if config.token_budget else "")
    plot_tradeoff(pareto_points(reports, series), out / "pareto.png", reference=WARM_START, title=title)
    print(tables)
    return record


def sweep_record(reports: dict[str, dict], runs: dict[str, dict] | None = None) -> dict:
    """Every report plus its columns normalised to the warm start (100 = warm start), and each trained
    run's steps and sampled response tokens."""
    warm = reports[WARM_START]["datasets"]
    return {
        "reports": reports,
        "normalised": {name: normalised_columns(report["datasets"], warm) for name, report in reports.items()},
        "runs": runs or {},
    }


def format_sweep_table(record: dict) -> str:
    """Markdown table: per model, accuracy and mean tokens per dataset, the normalised average, then the
    training run's steps and sampled response tokens (thousands)."""
    labels = list(record["reports"][WARM_START]["datasets"])
    header = ["model", *(f"{label} {column}" for label in labels for column in ("acc %", "tokens")), "acc norm", "tok norm",
              "steps", "train tok (k)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in record["reports"].items():
        cells = [name]
        for label in labels:
            metrics = report["datasets"][label]
            cells += [f"{100 * metrics['accuracy']:.1f}", f"{metrics['mean_tokens']:.1f}"]
        average = record["normalised"][name]["average"]
        run = record["runs"].get(name, {})
        tokens = run.get("rollout_tokens")
        cells += [_cell(average["accuracy_pct"]), _cell(average["tokens_pct"]), str(run.get("steps", "")),
                  "" if tokens is None else f"{tokens / 1000:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_difficulty_tables(record: dict) -> list[str]:
    """Per dataset with difficulty levels, a markdown table: per model, ``accuracy % / mean tokens`` at each level."""
    tables = []
    for label, warm in record["reports"][WARM_START]["datasets"].items():
        levels = list(warm.get("by_difficulty", {}))
        if not levels:
            continue
        header = ["model", *(f"level {level}" for level in levels)]
        lines = [f"{label}: accuracy % / mean tokens per difficulty level", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, report in record["reports"].items():
            by_level = report["datasets"][label].get("by_difficulty", {})
            cells = [f"{100 * by_level[level]['accuracy']:.1f} / {by_level[level]['mean_tokens']:.1f}" if level in by_level else ""
                     for level in levels]
            lines.append("| " + " | ".join([name, *cells]) + " |")
        tables.append("\n".join(lines))
    return tables


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def pareto_points(reports: dict[str, dict], series: dict[str, str] | None = None) -> list[dict]:
    """One plot point per (model, dataset) and per (model, dataset, difficulty level); ``series``: the
    plot series of each trained model (its recipe, or ``alpha``), joined by a line."""
    series = series or {}
    points = []
    for name, report in reports.items():
        for label, metrics in report["datasets"].items():
            panels = [(label, metrics), *((f"{label}, level {level}", stats) for level, stats in metrics.get("by_difficulty", {}).items())]
            points += [{"label": name, "dataset": panel, "accuracy": stats["accuracy"], "mean_tokens": stats["mean_tokens"],
                        "series": series.get(name)} for panel, stats in panels]
    return points


def build_parser() -> argparse.ArgumentParser:
    defaults = SweepConfig(out="", alphas=(0.0,))
    parser = argparse.ArgumentParser(
        prog="python -m effreason.sweep", description=__doc__.split("\n\n")[0],
        epilog="Flags after a lone -- are passed to python -m effreason.train for every setting.",
    )
    parser.add_argument("--alphas", type=parse_alphas, help="comma-separated alphas of the paper's reward, e.g. 0,0.05,0.1,0.2,0.4")
    parser.add_argument("--recipes", type=parse_recipe_specs,
                        help=f"comma-separated recipes, NAME or NAME:VALUE (VALUE sets the recipe's knob: paper:0.1 is alpha 0.1); "
                             f"known: {', '.join(RECIPES)}")
    parser.add_argument("--rollout-token-budget", type=int,
                        help=f"response tokens each training run samples before it stops (default with --recipes: "
                             f"{DEFAULT_ROLLOUT_TOKEN_BUDGET:,}; without: each run's --steps)")
    parser.add_argument("--out", required=True, help="sweep folder (run folders, evaluations, table, plot)")
    parser.add_argument("--model", help="warm start every setting trains from (default: the built-in one)")
    parser.add_argument("--data", action="append", help=f"held-out evaluation dataset, repeatable: {SPEC_HELP} (default: toy)")
    parser.add_argument("--max-problems", type=int, help="at most this many problems per dataset")
    parser.add_argument("--n", type=int, default=defaults.n, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="evaluation temperature (0 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="evaluation response token limit")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="evaluation seed")
    parser.add_argument("--cutoffs", type=parse_token_counts, help="cut-off baselines: warm start cut at these token counts, then forced to answer")
    parser.add_argument("--prompt-budgets", type=parse_token_counts, help="prompted-budget baselines: warm start asked to answer in fewer than these token counts")
    parser.add_argument("--device", default=defaults.device, help="evaluation device: auto, cpu, cuda")
    parser.add_argument("--dtype", default=defaults.dtype, help="evaluation dtype: auto, float32, bfloat16, float16")
    return parser


def config_from_argv(argv: list[str]) -> SweepConfig:
    """Sweep flags before a lone ``--``, training flags (``python -m effreason.train``'s) after it."""
    from effreason.train.config import build_parser as train_parser

    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    train_args = vars(train_parser().parse_args(argv[split + 1:]))
    values = {key: value for key, value in vars(args).items() if value is not None}
    return SweepConfig(**values, train_args=train_args)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run_sweep(config_from_argv(argv))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
