"""``python -m effreason.eval``: accuracy and response length of a model on one or more datasets.

    python -m effreason.eval --model runs/alpha-0.2 --data toy --data math500:MATH500.jsonl \\
        --n 3 --baseline effreason/assets/warmstart --json eval.json --plot eval.png

Flags mirror :class:`effreason.eval.config.EvalConfig`. Baselines the reviewers asked for:
``--max-new-tokens B --force-answer`` (generation cut-off) and ``--prompt-budget X`` (prompted
token budget). Bad input (unknown dataset, missing file or field, a model folder without a
tokenizer) is reported as one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from effreason.data import SPEC_HELP
from effreason.grading import ANSWER_KINDS
from effreason.eval.config import EvalConfig
from effreason.eval.evaluate import evaluate, load_datasets
from effreason.eval.plots import plot_tradeoff
from effreason.eval.report import format_table, settings_line, write_report

USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    defaults = EvalConfig(model="")
    parser = argparse.ArgumentParser(prog="python -m effreason.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF checkpoint folder, or a training run folder (uses RUN/model or RUN/checkpoint)")
    parser.add_argument("--data", action="append", help=f"dataset, repeatable: {SPEC_HELP} (default: toy)")
    parser.add_argument("--n", type=int, default=defaults.n, help="samples per problem; accuracy is pass@1 averaged over them")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature (0 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="response token limit")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed (and generated datasets' seed)")
    parser.add_argument("--baseline", help="model folder, run folder or --json report to normalise against (100 = baseline)")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--plot", help="write an accuracy-vs-tokens plot here (.png, .pdf, .svg)")
    parser.add_argument("--max-problems", type=int, help="use at most this many problems per dataset")
    parser.add_argument("--force-answer", action="store_true", help="cut-off baseline: after --max-new-tokens, append '... the answer is \\boxed{' and let the model finish")
    parser.add_argument("--prompt-budget", type=int, help="prompted-budget baseline: ask for an answer in fewer than this many tokens")
    parser.add_argument("--question-field", help="question field of jsonl: datasets (default: question, problem or prompt)")
    parser.add_argument("--answer-field", help="answer field of jsonl: datasets (default: answer, solution or final_answer)")
    parser.add_argument("--answer-kind", default=defaults.answer_kind, choices=ANSWER_KINDS,
                        help="how answers are extracted from responses to dataset files (default: boxed, the paper's rule)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=defaults.dtype, help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--progress", action="store_true", help="show a progress bar of generated responses on stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    values = {key: value for key, value in vars(args).items() if value is not None}
    return EvalConfig(**values)


def run(config: EvalConfig) -> dict:
    """Evaluate, print the table, write the JSON and the plot; returns the report."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets = load_datasets(config.data, max_problems=config.max_problems, seed=config.seed,
                             question_field=config.question_field, answer_field=config.answer_field)
    report = evaluate(config, datasets)
    print(settings_line(report))
    print(format_table(report))
    if config.json:
        write_report(report, config.json)
    if config.plot:
        plot_tradeoff(tradeoff_points(report), config.plot, reference="baseline", title=report["model"])
    return report


def tradeoff_points(report: dict) -> list[dict]:
    """Plot points of a report: the baseline (when present) then the model, per dataset."""
    reports = [("baseline", report["baseline"]), ("model", report)] if report.get("baseline") else [("model", report)]
    return [
        {"label": name, "dataset": label, "accuracy": metrics["accuracy"], "mean_tokens": metrics["mean_tokens"]}
        for name, source in reports
        for label, metrics in source["datasets"].items()
        if label in report["datasets"]
    ]


def describe_error(error: Exception) -> str:
    """The error as one line; an import that found the wrong module says which file Python took."""
    if isinstance(error, ImportError) and error.path:
        return (f"{error} (Python took module {error.name!r} from {error.path}: the installation is broken "
                f"or a folder shadows it, not your input)")
    return str(error)


def main(argv=None) -> int:
    try:
        run(config_from_args(build_parser().parse_args(argv)))
    except USER_ERRORS as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    return 0
