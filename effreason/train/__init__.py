"""``python -m effreason.train``: the paper's length-penalised RLOO, end to end.

``run(TrainConfig(...)) -> Path`` is the whole job (used by the CLI and by the alpha sweep).
"""

from effreason.train.config import PRESETS, TrainConfig, config_from_args
from effreason.train.loop import TrainingAborted, run

__all__ = ["PRESETS", "TrainConfig", "TrainingAborted", "config_from_args", "run"]
