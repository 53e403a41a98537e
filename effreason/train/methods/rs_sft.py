"""``--method rs-sft``: rejection-sampling SFT on the shortest correct response, the reviewers' first baseline.

    python -m effreason.train --method rs-sft            # the built-in miniature

Each step samples ``k = group_size`` responses to each training prompt from the current model,
keeps the shortest correct one per prompt (prompts with none are skipped) and fine-tunes on
those with cross-entropy on the response tokens only (the prompt is context, not target):
``L = -(1 / sum_s |y*_s|) * sum_s sum_t log pi(y*_st | x_s, y*_s<t)`` per mini-batch. Sampling
from the model being trained makes it iterated rejection sampling (RAFT, Dong et al. 2023; ReST,
Gulcehre et al. 2023); the first step samples from the warm start.
"""

from __future__ import annotations

import torch

from effreason.train.methods.units import SampledGroup, TrainingUnit, UnitMethod, sequence_logprobs, shortest_correct
from effreason.train.packing import MicroBatch


def response_nll(model, batch: MicroBatch, lm_head_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``-sum_s sum_t log pi(y_st | x_s, y_s<t)``: the negative log-likelihood of the batch's response
    tokens, summed (the caller divides by the mini-batch's response tokens), and no statistics.
    The SFT loss of this method and of the warm start (:mod:`effreason.warmstart`)."""
    return -sequence_logprobs(model, batch, lm_head_dtype).sum(), {}


def select_shortest_correct(group: SampledGroup) -> TrainingUnit | None:
    """The SFT example of one prompt: its shortest correct sample (first on ties); None when none is correct."""
    response = shortest_correct(group)
    return None if response is None else TrainingUnit(group.prompt_ids, (response,))


class RejectionSamplingSFT(UnitMethod):
    """Token-level cross-entropy on the selected responses, averaged over response tokens."""

    name = "rs-sft"
    response_names = ("selected",)

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        return select_shortest_correct(group)

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return response_nll(model, batch, self.trainer.lm_head_dtype)

    def normaliser(self, units: list[TrainingUnit]) -> int:
        return sum(len(unit.responses[0]) for unit in units)
