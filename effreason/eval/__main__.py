"""``python -m effreason.eval``: see :mod:`effreason.eval.cli`."""

import sys

from effreason.eval.cli import main

sys.exit(main())
