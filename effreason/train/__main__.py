"""``python -m effreason.train [flags]``: see ``--help``; with no flags, the built-in miniature.

``--method`` picks the paper's length-penalised RL (default) or one of the reviewers' baselines
(``effreason.baselines``): rejection-sampling SFT on the shortest correct of k samples, or DPO
with the shortest correct answer chosen and the longest correct rejected.
"""

import sys

from effreason.train.config import build_parser, resolve_config
from effreason.train.loop import TrainingAborted, run

METHODS = ("rl", "rs-sft", "dpo")
DPO_DEFAULT_LR = 3e-5  # the RL default (1e-4) collapses DPO's accuracy on the miniature


def add_method_flags(parser):
    """``--method`` and the baselines' own options, beside the ``TrainConfig`` flags."""
    parser.add_argument("--method", choices=METHODS, default="rl",
                        help="rl: the paper's length-penalised RLOO; rs-sft: rejection-sampling SFT on the shortest "
                             "correct of k samples; dpo: DPO, shortest correct chosen vs longest correct rejected "
                             "(default: rl)")
    parser.add_argument("--dpo-beta", type=float, default=0.1, help="dpo: beta of the DPO loss (default: 0.1)")
    parser.add_argument("--baseline-epochs", type=int, default=1,
                        help="rs-sft, dpo: passes over each step's selected samples (default: 1)")
    return parser


def run_method(method: str, config, *, dpo_beta: float, baseline_epochs: int):
    """Run ``method`` with ``config``; returns the run folder."""
    if method == "rs-sft":
        from effreason.baselines import RSSFTOptions, run_rs_sft

        return run_rs_sft(config, RSSFTOptions(epochs=baseline_epochs))
    if method == "dpo":
        from effreason.baselines import DPOOptions, run_dpo

        return run_dpo(config, DPOOptions(beta=dpo_beta, epochs=baseline_epochs))
    return run(config)


def main(argv=None) -> int:
    try:
        given = vars(add_method_flags(build_parser()).parse_args(argv))
        method, dpo_beta, baseline_epochs = given.pop("method"), given.pop("dpo_beta"), given.pop("baseline_epochs")
        if method == "dpo":
            given.setdefault("lr", DPO_DEFAULT_LR)
        run_method(method, resolve_config(given), dpo_beta=dpo_beta, baseline_epochs=baseline_epochs)
    except (ValueError, FileNotFoundError, TrainingAborted) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
