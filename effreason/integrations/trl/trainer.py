"""``GRPOTrainer``: TRL's trainer whose policy loss is ``effreason.ops.fused_ppo_loss`` on the last hidden states."""

from __future__ import annotations

import trl
from packaging.version import InvalidVersion, Version

from effreason.integrations.trl.loss import GRPOLossSettings, fused_grpo_loss

MINIMUM_TRL = "1.9"
"""The first TRL release whose loss normalisation the fused loss reproduces (``dapo`` scales by
``steps_per_generation`` since 1.9)."""


def _check_trl_version(found: str) -> None:
    try:
        too_old = Version(found) < Version(MINIMUM_TRL)
    except InvalidVersion:  # a source checkout without metadata
        return
    if too_old:
        raise ImportError(f"effreason.integrations.trl.GRPOTrainer needs trl>={MINIMUM_TRL}, found {found}")


_check_trl_version(trl.__version__)


class GRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the fused loss: same arguments, same numbers, no (N, V) logits in the loss.

    Generation, rewards, advantages, the reference and old log-probs, logging and the optimizer are
    TRL's; only ``compute_loss`` changes (see ``effreason.integrations.trl.loss``). Construction
    raises ``ValueError`` for a ``GRPOConfig`` option the fused loss does not reproduce exactly.

    Args:
        *args, **kwargs: those of ``trl.GRPOTrainer``.
        fused_backend: ``fused_ppo_loss``'s backend, ``"auto"`` (CUDA or Triton on GPUs, torch on the
            CPU), ``"torch"``, ``"triton"`` or ``"cuda"``.

    Example::

        from effreason.integrations.trl import GRPOTrainer, paper_reward   # instead of: from trl import GRPOTrainer

        trainer = GRPOTrainer(model=model, reward_funcs=paper_reward(alpha=0.2), args=config, train_dataset=dataset)
    """

    def __init__(self, *args, fused_backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_loss_settings = GRPOLossSettings.from_trainer(self, backend=fused_backend)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("The GRPOTrainer does not support returning outputs")
        return fused_grpo_loss(self, model, inputs, self.fused_loss_settings)
