"""``python -m effreason.train [flags]``: see ``--help``; with no flags, the built-in miniature."""

import sys

from effreason.train.config import config_from_args
from effreason.train.loop import TrainingAborted, run


def main(argv=None) -> int:
    try:
        config = config_from_args(argv)
        run(config)
    except (ValueError, TrainingAborted) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
