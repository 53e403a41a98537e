"""The reviewers' training baselines, run like ``python -m effreason.train`` and compared in the sweep.

* ``run_rs_sft(config)``: rejection-sampling SFT on the shortest correct of k samples.
* ``run_dpo(config)``: DPO with shortest-correct as chosen and longest-correct as rejected.

Both take the training loop's ``TrainConfig`` (plus ``RSSFTOptions`` / ``DPOOptions``) and write
a run folder in the loop's layout (``effreason.baselines.runner``).
"""

from effreason.baselines.dpo import DPOOptions, dpo_loss, dpo_margins, run_dpo, select_preference_pair
from effreason.baselines.rs_sft import RSSFTOptions, run_rs_sft, select_shortest_correct

BASELINES = {"rs-sft": run_rs_sft, "dpo": run_dpo}
"""``--method`` name -> entry point ``(config, options=None) -> run folder``."""

__all__ = ["BASELINES", "DPOOptions", "RSSFTOptions", "dpo_loss", "dpo_margins", "run_dpo", "run_rs_sft", "select_preference_pair", "select_shortest_correct"]
