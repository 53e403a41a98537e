"""One step's training rollout: sample, grade, score, then the group filter (``--group-filter``).

    prompts -> k samples each, at the step's token limit -> graded -> rewards of --reward (whole groups)
            -> the group filter (effreason.train.group_filters) -> what the method trains on

A filter that refills (dynamic sampling) samples up to ``--dynamic-sampling-rounds`` further rounds of
``--prompts-per-step`` fresh prompts while the step has fewer kept groups than prompts; the step then
trains on the first ``--prompts-per-step`` kept groups. Under torchrun every rank trains on as many
groups as the rank with the fewest, in multiples of ``--mini-batches``; with none, the step takes no
optimizer step. Every sampled token counts towards ``--rollout-token-budget``, kept or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from effreason.train.group_filters import GROUP_FILTERS, kept_rows
from effreason.train.rollout import Rollout


@dataclass
class StepRollout:
    """What one step sampled (every round, scored) and the part of it the update trains on."""

    sampled: Rollout
    trained: Rollout
    rounds: int
    prompts: int
    sampled_tokens: int

    @property
    def kept_fraction(self) -> float:
        """Share of this rank's sampled responses the update trains on."""
        return len(self.trained.responses) / max(len(self.sampled.responses), 1)


def collect_rollout(sample: Callable[[int], Rollout], score: Callable[[Rollout], torch.Tensor], config, context) -> StepRollout:
    """Sample rounds (``sample(round_index)``: this rank's share of ``prompts_per_step`` fresh prompts,
    graded), score each (``score(rollout) -> (S,)`` rewards), filter, refill (module docstring)."""
    group_filter = GROUP_FILTERS[config.group_filter]
    wanted = config.prompts_per_step // context.world_size
    parts: list[Rollout] = []
    kept: list[list[int]] = []
    while True:
        part = sample(len(parts))
        part.rewards = score(part)
        offset = sum(len(previous.responses) for previous in parts)
        rows = kept_rows(part.rewards, part.lengths, part.group_size, group_filter, config.gfpo_keep)
        kept += [[offset + row for row in group] for group in rows]
        parts.append(part)
        short = len(kept) < wanted
        if not (group_filter.refills and len(parts) <= config.dynamic_sampling_rounds and any(context.gather([short]))):
            break
    trained_groups = min(context.gather([min(len(kept), wanted)]))
    trained_groups -= trained_groups % config.mini_batches
    sampled = Rollout.concatenate(parts)
    sampled_tokens = sum(context.gather([int(sampled.lengths.sum())]))
    return StepRollout(sampled, sampled.select(kept[:trained_groups]), len(parts), len(parts) * config.prompts_per_step, sampled_tokens)
