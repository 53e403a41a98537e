"""Evaluation and training data: ``load_dataset("NAME[:PATH]")`` and ``score_response``.

Datasets are the user's own files (GSM8K, MATH500, AIME, any JSON Lines), the built-in toy
task's held-out split, or reasoning-gym's procedural tasks; nothing downloads at run time.
Small files of each format for tests live in ``effreason/data/fixtures/``.
"""

from effreason.data.load import DATASET_NAMES, SPEC_HELP, load_dataset, parse_spec
from effreason.data.scoring import score_response

__all__ = ["DATASET_NAMES", "SPEC_HELP", "load_dataset", "parse_spec", "score_response"]
