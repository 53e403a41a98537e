"""Rejection-sampling SFT on the shortest correct response: the reviewers' first training baseline.

    python -m effreason.train --method rs-sft            # the built-in miniature

Each step samples ``k = group_size`` responses to each training prompt from the current model,
keeps the shortest correct one per prompt (prompts with none are skipped) and fine-tunes on
those with cross-entropy on the response tokens only (the prompt is context, not target).
Sampling from the model being trained makes it iterated rejection sampling (RAFT, Dong et al.
2023; ReST, Gulcehre et al. 2023); the first step samples from the warm start. Everything else,
the run folder included, is shared with DPO in :mod:`effreason.baselines.runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from effreason.baselines.runner import (
    BaselineMethod,
    SampledGroup,
    TrainingUnit,
    require_positive_int,
    run_baseline,
    sequence_logprobs,
    shortest_correct,
)
from effreason.train.config import TrainConfig
from effreason.train.packing import MicroBatch


@dataclass
class RSSFTOptions:
    """Settings of rejection-sampling SFT beyond ``TrainConfig``."""

    epochs: int = 1  # passes over each step's selected responses (each pass: config.mini_batches optimizer steps)

    def __post_init__(self):
        require_positive_int("epochs", self.epochs)


def select_shortest_correct(group: SampledGroup) -> TrainingUnit | None:
    """The SFT example of one prompt: its shortest correct sample (first on ties); None when none is correct."""
    response = shortest_correct(group)
    return None if response is None else TrainingUnit(group.prompt_ids, (response,))


class RejectionSamplingSFT(BaselineMethod):
    """Token-level cross-entropy on the selected responses, averaged over response tokens."""

    name = "rs-sft"
    response_names = ("selected",)

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        return select_shortest_correct(group)

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """``-sum_s sum_t log pi(y_st | x_s, y_s<t)``: the negative log-likelihood summed over the batch's tokens."""
        return -sequence_logprobs(model, batch).sum(), {}

    def normaliser(self, batch: MicroBatch) -> int:
        return batch.num_tokens


def run_rs_sft(config: TrainConfig, options: RSSFTOptions | None = None) -> Path:
    """Rejection-sampling SFT on the shortest correct of ``k`` samples; returns the run folder.

    Per step: ``k = config.group_size`` samples for each of ``config.prompts_per_step`` prompts from
    the current model; per prompt the shortest correct sample ``y*``; then minimise
    ``L = -(1 / sum_s |y*_s|) * sum_s sum_t log pi(y*_st | x_s, y*_s<t)`` with AdamW. Uses the
    ``TrainConfig`` fields model, data, eval_data, out, seed, group_size, prompts_per_step,
    mini_batches, steps, lr, warmup_ratio, adam_beta1/2, weight_decay, grad_clip, max_new_tokens,
    temperature, top_p, micro_batch_tokens, eval_* and device/dtype; the RL-only ones are ignored.
    """
    return run_baseline(config, RejectionSamplingSFT(options or RSSFTOptions()))
