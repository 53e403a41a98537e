"""``--method dpo``: DPO with the shortest correct response as chosen and the longest correct one as rejected.

    python -m effreason.train --method dpo               # the built-in miniature

Direct Preference Optimization (Rafailov et al. 2023): with a frozen reference (the starting
model, ``--model``) and sequence log-probs summed over response tokens,
``loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))``,
averaged over a mini-batch's pairs. Pairs come from ``k = group_size`` samples per prompt: chosen =
shortest correct, rejected = longest correct, only where the two differ in length (so correctness
is never traded for brevity). Pairs are sampled from the current model each step (online/iterative
DPO; the first step samples from the warm start).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effreason.train.methods.units import (
    SampledGroup,
    TrainingUnit,
    UnitMethod,
    longest_correct,
    sequence_logprobs,
    shortest_correct,
)
from effreason.train.packing import MicroBatch

def select_preference_pair(group: SampledGroup) -> TrainingUnit | None:
    """(chosen, rejected) = (shortest correct, longest correct) of one prompt's samples, first in
    sample order on ties; None unless there are correct samples of two different lengths."""
    chosen, rejected = shortest_correct(group), longest_correct(group)
    if chosen is None or len(chosen) == len(rejected):
        return None
    return TrainingUnit(group.prompt_ids, (chosen, rejected))


def dpo_margins(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair implicit reward margin of DPO (Rafailov et al. 2023), (P,) from four (P,) sequence log-probs:

    ``beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))``.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError("policy_chosen, policy_rejected, reference_chosen and reference_rejected must be "
                         f"(P,) tensors of one shape, got shapes {sorted(shapes)}")
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7), (P,): ``-log sigmoid(dpo_margins(...))``, i.e.

    ``-log sigmoid(beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)))``.
    """
    return -F.logsigmoid(dpo_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta))


class DirectPreferenceOptimization(UnitMethod):
    """DPO on (shortest correct, longest correct) pairs against a frozen copy of the starting model."""

    name = "dpo"
    response_names = ("chosen", "rejected")

    def __init__(self, trainer):
        super().__init__(trainer)
        self.beta = trainer.config.dpo_beta
        self.reference = trainer.load_reference()

    @staticmethod
    def keeps_reference(config) -> bool:
        return True

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        return select_preference_pair(group)

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The DPO loss summed over the batch's pairs (rows alternate chosen, rejected); statistics
        ``margin`` (``beta`` times the log-ratio difference) and ``preference_accuracy`` (margin > 0)."""
        policy = sequence_logprobs(model, batch, self.trainer.lm_head_dtype)  # (2P,)
        with torch.no_grad():
            reference = sequence_logprobs(self.reference, batch, self.trainer.lm_head_dtype)  # (2P,)
        pair = (policy[0::2], policy[1::2], reference[0::2], reference[1::2], self.beta)
        losses = dpo_loss(*pair)  # (P,)
        margins = dpo_margins(*pair).detach()  # (P,)
        return losses.sum(), {"margin": float(margins.sum()), "preference_accuracy": float((margins > 0).sum())}

    def normaliser(self, units: list[TrainingUnit]) -> int:
        return len(units)
