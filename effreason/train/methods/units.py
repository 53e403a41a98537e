"""What rejection-sampling SFT and DPO share: each prompt's group becomes at most one training unit.

A :class:`UnitMethod` selects a unit per prompt (one response for SFT, a (chosen, rejected) pair
for DPO), gathers the units of every rank, and takes ``config.mini_batches`` optimizer steps per
pass (``--baseline-epochs`` passes) over them. Every rank splits the same global list the same
way, trains on its share of each mini-batch, and scales its micro-batch losses by
``world_size / normaliser`` of the whole mini-batch (tokens for SFT, pairs for DPO), so the
averaged gradient is that of the mini-batch's mean loss whatever the micro-batching; a rank whose
share is empty runs one unit at weight 0, so every rank joins each gradient reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effreason.losses import segment_sum
from effreason.ops import fused_logprobs
from effreason.train.packing import MicroBatch, build_micro_batch, plan_micro_batches
from effreason.train.rollout import Rollout
from effreason.train.step import WeightedBatch, lm_head_inputs, optimizer_steps


@dataclass
class SampledGroup:
    """The ``k`` graded samples of one prompt. ``responses[j]``: token ids (stop token kept);
    ``correct[j]``: right answer and ended by a stop token (the paper's rule)."""

    prompt_ids: list[int]
    responses: list[list[int]]
    correct: list[bool]


@dataclass
class TrainingUnit:
    """What a method trains on from one prompt: one response (SFT) or a (chosen, rejected) pair (DPO)."""

    prompt_ids: list[int]
    responses: tuple[list[int], ...]


def sampled_groups(rollout: Rollout) -> list[SampledGroup]:
    """The rollout as one :class:`SampledGroup` per prompt."""
    return [SampledGroup(rollout.prompts[rows.start], rollout.responses[rows], rollout.correct[rows].tolist())
            for rows in rollout.groups()]


def shortest_correct(group: SampledGroup) -> list[int] | None:
    """The correct response with the fewest tokens (the first in sample order on ties); None without one."""
    correct = [response for response, ok in zip(group.responses, group.correct) if ok]
    return min(correct, key=len) if correct else None


def longest_correct(group: SampledGroup) -> list[int] | None:
    """The correct response with the most tokens (the first in sample order on ties); None without one."""
    correct = [response for response, ok in zip(group.responses, group.correct) if ok]
    return max(correct, key=len) if correct else None


def pack_units(units: list[TrainingUnit], rows_per_unit: int, token_budget: int, pad_token_id: int, *,
               packed: bool = False) -> list[MicroBatch]:
    """Units flattened to rows (a unit's responses consecutive) and packed into micro-batches of whole
    units, ``rows * longest_row <= token_budget`` (``effreason.train.packing``; the RL-only fields of
    ``MicroBatch`` are filled with zeros)."""
    prompts = [unit.prompt_ids for unit in units for _ in unit.responses]
    responses = [response for unit in units for response in unit.responses]
    row_lengths = [len(p) + len(r) - 1 for p, r in zip(prompts, responses)]
    unused_logprobs = [[0.0] * len(r) for r in responses]
    unused_correct = torch.ones(len(responses), dtype=torch.bool)
    unused_advantages = torch.zeros(len(responses), dtype=torch.float32)
    return [
        build_micro_batch(prompts, responses, unused_logprobs, unused_correct, unused_advantages, rows, pad_token_id,
                          packed=packed)
        for rows in plan_micro_batches(row_lengths, rows_per_unit, token_budget)
    ]


def sequence_logprobs(model, batch: MicroBatch, lm_head_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``log pi(y_s | x_s) = sum_t log softmax(z_t)[y_t]`` over each row's response tokens, (S,) float32.

    The fused LM-head op of the RL loss (``effreason.ops.fused_logprobs``), so the (N, V) logits
    never exist; differentiable. ``lm_head_dtype``: as :func:`effreason.train.step.lm_head_inputs`.
    """
    hidden, weight = lm_head_inputs(model, batch, lm_head_dtype)  # (N, H), (V, H)
    token_logprobs = fused_logprobs(hidden, weight, batch.targets, 1.0)  # (N,)
    return segment_sum(token_logprobs.float(), batch.cu_seqlens)  # (S,)


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` in at most ``parts`` consecutive chunks whose sizes differ by at most one."""
    parts = min(parts, len(items))
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)] if parts else []
    return [items[start:stop] for start, stop in zip(bounds, bounds[1:])]


class UnitLoss(torch.nn.Module):
    """The model and its method's loss: ``forward(batch)`` is ``method.loss(model, batch)`` (DDP/FSDP wrap this)."""

    def __init__(self, model, method: "UnitMethod"):
        super().__init__()
        self.model = model
        self.loss_of_batch = method.loss

    def forward(self, batch: MicroBatch):
        return self.loss_of_batch(self.model, batch)


class UnitMethod:
    """A method training on one unit per prompt (module docstring). Subclasses give ``name``,
    ``response_names`` (the responses of a unit), ``select``, ``loss`` and ``normaliser``."""

    name: str = ""
    response_names: tuple[str, ...] = ()

    def __init__(self, trainer):
        self.trainer = trainer
        self.module = UnitLoss(trainer.model, self)

    @staticmethod
    def keeps_reference(config) -> bool:
        """Whether the method holds a frozen reference model (the memory plan counts it)."""
        return False

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        raise NotImplementedError

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's loss *summed* over what ``normaliser`` counts, and summed statistics."""
        raise NotImplementedError

    def normaliser(self, units: list[TrainingUnit]) -> int:
        """What a mini-batch's loss is averaged over (tokens for SFT, pairs for DPO)."""
        raise NotImplementedError

    def update(self, rollout: Rollout, alpha: float) -> dict:
        """Select, gather across ranks, then ``baseline_epochs`` passes of ``mini_batches`` optimizer steps."""
        trainer, config = self.trainer, self.trainer.config
        local = [unit for unit in map(self.select, sampled_groups(rollout)) if unit is not None]
        units = trainer.context.gather(local)
        mini_batches = [self._weighted_batches(mini_batch)
                        for _ in range(config.baseline_epochs) for mini_batch in split_evenly(units, config.mini_batches)]
        result = optimizer_steps(trainer.trainable, trainer.optimizer, trainer.scheduler, mini_batches,
                                 lambda module, batch: module(batch), grad_clip=config.grad_clip,
                                 all_finite=trainer.context.all_finite, device=trainer.device,
                                 compute_dtype=trainer.compute_dtype)
        result["units"] = len(units)
        for index, name in enumerate(self.response_names):
            result[f"{name}_tokens"] = sum(len(u.responses[index]) for u in units) / len(units) if units else None
        return result

    def _weighted_batches(self, units: list[TrainingUnit]) -> list[WeightedBatch]:
        """This rank's share of a mini-batch's units, packed, each micro-batch weighted ``world_size / normaliser``."""
        context, config = self.trainer.context, self.trainer.config
        share = units[context.rank::context.world_size]
        weight = context.world_size / self.normaliser(units) if share else 0.0
        batches = pack_units(share or units[:1], len(self.response_names), config.micro_batch_tokens, self.trainer.pad_token_id,
                             packed=self.trainer.packed_forward)
        return [(batch, weight) for batch in batches]
