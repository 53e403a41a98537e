"""``python -m effreason.train [flags]``: see ``--help``; with no flags, the built-in miniature.

``--method`` picks the paper's length-penalised RL (default) or one of the reviewers' baselines
(``effreason.train.methods``): rejection-sampling SFT on the shortest correct of k samples, or DPO
with the shortest correct answer chosen and the longest correct rejected. All run in the same loop.
``--recipe`` starts from a published method's reward and training options (``effreason.recipes``).
``--dry-run`` prints the run's memory plan (``effreason.train.memory_plan``) and exits: status 0 when it
fits, 1 when it does not.
"""

import sys

from effreason.train.config import config_from_args
from effreason.train.loop import TrainingAborted, run
from effreason.train.memory_plan import dry_run


def main(argv=None) -> int:
    try:
        config = config_from_args(argv)
        if config.dry_run:
            return dry_run(config)
        run(config)
    except (ValueError, FileNotFoundError, TrainingAborted) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
