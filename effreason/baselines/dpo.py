"""DPO with the shortest correct response as chosen and the longest correct one as rejected.

    python -m effreason.train --method dpo               # the built-in miniature

Direct Preference Optimization (Rafailov et al. 2023): with a frozen reference copy of the
starting model and sequence log-probs summed over response tokens,
``loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))``.
Pairs come from ``k = group_size`` samples per prompt: chosen = shortest correct, rejected =
longest correct, only where the two differ in length (so correctness is never traded for
brevity). Pairs are sampled from the current model each step (online/iterative DPO; the first
step samples from the warm start, which is also the reference). The run loop and folder are
shared with RS-SFT in :mod:`effreason.baselines.runner`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from effreason.baselines.runner import (
    BaselineMethod,
    SampledGroup,
    TrainingUnit,
    longest_correct,
    require_positive_int,
    run_baseline,
    sequence_logprobs,
    shortest_correct,
)
from effreason.train.config import TrainConfig
from effreason.train.packing import MicroBatch


@dataclass
class DPOOptions:
    """Settings of DPO beyond ``TrainConfig``."""

    beta: float = 0.1  # strength of the implicit KL to the reference (Rafailov et al. 2023)
    epochs: int = 1  # passes over each step's pairs (each pass: config.mini_batches optimizer steps)

    def __post_init__(self):
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 < self.beta < math.inf:
            raise ValueError(f"beta must be a positive finite number, got {self.beta!r}")
        require_positive_int("epochs", self.epochs)


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


class DirectPreferenceOptimization(BaselineMethod):
    """DPO on (shortest correct, longest correct) pairs against a frozen copy of the starting model."""

    name = "dpo"
    response_names = ("chosen", "rejected")

    def prepare(self, model) -> None:
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        return select_preference_pair(group)

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The DPO loss summed over the batch's pairs (rows alternate chosen, rejected); statistics
        ``margin`` (``beta`` times the log-ratio difference) and ``preference_accuracy`` (margin > 0)."""
        policy = sequence_logprobs(model, batch)  # (2P,)
        with torch.no_grad():
            reference = sequence_logprobs(self.reference, batch)  # (2P,)
        pair = (policy[0::2], policy[1::2], reference[0::2], reference[1::2], self.options.beta)
        losses = dpo_loss(*pair)  # (P,)
        margins = dpo_margins(*pair).detach()  # (P,)
        return losses.sum(), {"margin": float(margins.sum()), "preference_accuracy": float((margins > 0).sum())}

    def normaliser(self, batch: MicroBatch) -> int:
        return batch.num_sequences // 2


def run_dpo(config: TrainConfig, options: DPOOptions | None = None) -> Path:
    """DPO (Rafailov et al. 2023) with chosen = shortest correct, rejected = longest correct; returns the run folder.

    Per step: ``k = config.group_size`` samples for each of ``config.prompts_per_step`` prompts from
    the current model, one pair per prompt whose correct samples differ in length; then minimise
    the mean over pairs of ``-log sigmoid(beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))))``
    with AdamW, ``ref`` a frozen copy of the starting model, log-probs summed over response tokens.
    Uses the same ``TrainConfig`` fields as :func:`effreason.baselines.rs_sft.run_rs_sft`.
    """
    return run_baseline(config, DirectPreferenceOptimization(options or DPOOptions()))
