"""Rollout sequences -> micro-batches bounded by a token budget, whole prompt groups each.

A micro-batch holds ``prompt + response[:-1]`` rows (the last response token is never an
input), either right-padded into (B, L) with an attention mask, or packed padding-free into one
(1, T) row whose ``position_ids`` restart at 0 for each row: transformers then keeps each row's
attention within the row (flash-attn varlen where installed, a block-causal mask with SDPA). The hidden state at position ``t`` predicts token
``t + 1``, so response token ``i`` of row ``b`` is predicted at ``P_b - 1 + i``; those
positions are gathered into the packed (N, H) layout of the loss ops, sequence after
sequence, with ``cu_seqlens`` marking the boundaries. The budget bounds ``B * L`` (padded
tokens), so a micro-batch never costs more memory than the budget allows. Micro-batches hold
whole groups where they fit, so the fused op can compute the paper's group reward itself; a
group too long for the budget is split by rows and its precomputed advantages are used instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MicroBatch:
    """Model inputs and packed loss inputs of whole groups.

    input_ids: (B, L), attention_mask (B, L) padded, or input_ids and position_ids (1, T) packed (no
    attention mask); gather_index: (N,) flat indices into the input positions;
    targets: (N,) response tokens; cu_seqlens: (B + 1,); old_logprobs, sampler_logprobs: (N,);
    correct: (B,) bool; advantages: (B,) float32; sequence_slice: the rows of the rollout it holds;
    whole_groups: it holds complete prompt groups (the paper's reward can be computed inside the loss).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    gather_index: torch.Tensor
    targets: torch.Tensor
    cu_seqlens: torch.Tensor
    old_logprobs: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    sequence_slice: slice
    whole_groups: bool = True
    position_ids: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.targets.numel()

    def to(self, device) -> "MicroBatch":
        moved = {name: None if getattr(self, name) is None else getattr(self, name).to(device) for name in
                 ("input_ids", "attention_mask", "gather_index", "targets", "cu_seqlens", "old_logprobs", "correct",
                  "advantages", "position_ids")}
        return MicroBatch(**moved, sequence_slice=self.sequence_slice, whole_groups=self.whole_groups)


def plan_micro_batches(row_lengths: list[int], group_size: int, token_budget: int) -> list[slice]:
    """Consecutive whole groups per micro-batch while ``rows * longest_row <= token_budget``; a group
    that alone exceeds the budget is split into row chunks that fit (at least one row each)."""
    if len(row_lengths) % group_size:
        raise ValueError(f"the number of rows ({len(row_lengths)}) must be divisible by group_size ({group_size})")
    plans, start, longest = [], 0, 0
    for group_start in range(0, len(row_lengths), group_size):
        group = slice(group_start, group_start + group_size)
        group_longest = max(row_lengths[group])
        if group_size * group_longest > token_budget:
            if group_start > start:
                plans.append(slice(start, group_start))
            plans += _row_chunks(row_lengths, group, token_budget)
            start, longest = group.stop, 0
            continue
        if group_start > start and (group.stop - start) * max(longest, group_longest) > token_budget:
            plans.append(slice(start, group_start))
            start, longest = group_start, 0
        longest = max(longest, group_longest)
    if start < len(row_lengths):
        plans.append(slice(start, len(row_lengths)))
    return plans


def _row_chunks(row_lengths: list[int], rows: slice, token_budget: int) -> list[slice]:
    """Consecutive rows of ``rows`` while ``count * longest <= token_budget`` (one row at least)."""
    chunks, start, longest = [], rows.start, 0
    for row in range(rows.start, rows.stop):
        if row > start and (row + 1 - start) * max(longest, row_lengths[row]) > token_budget:
            chunks.append(slice(start, row))
            start, longest = row, 0
        longest = max(longest, row_lengths[row])
    chunks.append(slice(start, rows.stop))
    return chunks


def build_micro_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    old_logprobs: list[list[float]],
    correct: torch.Tensor,
    advantages: torch.Tensor,
    rows: slice,
    pad_token_id: int,
    group_size: int = 1,
    *,
    packed: bool = False,
) -> MicroBatch:
    """The :class:`MicroBatch` of rollout rows ``rows`` (every response non-empty), padded or ``packed``."""
    row_prompts, row_responses = prompts[rows], responses[rows]
    inputs = [p + r[:-1] for p, r in zip(row_prompts, row_responses)]
    layout = _packed_layout(inputs) if packed else _padded_layout(inputs, pad_token_id)
    input_ids, attention_mask, position_ids, row_starts = layout
    gather = [torch.arange(start + len(prompt) - 1, start + len(prompt) - 1 + len(response))
              for start, prompt, response in zip(row_starts, row_prompts, row_responses)]
    lengths = torch.tensor([len(r) for r in row_responses], dtype=torch.long)
    cu_seqlens = torch.zeros(len(inputs) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        gather_index=torch.cat(gather),
        targets=torch.tensor([t for r in row_responses for t in r], dtype=torch.long),
        cu_seqlens=cu_seqlens,
        old_logprobs=torch.tensor([x for row in old_logprobs[rows] for x in row], dtype=torch.float32),
        correct=correct[rows],
        advantages=advantages[rows],
        sequence_slice=rows,
        whole_groups=rows.start % group_size == 0 and (rows.stop - rows.start) % group_size == 0,
        position_ids=position_ids,
    )


def _padded_layout(inputs: list[list[int]], pad_token_id: int):
    """Right-padded (B, L) ids and mask; row b starts at flat position ``b * L``."""
    width = max(len(row) for row in inputs)
    input_ids = torch.full((len(inputs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for b, row in enumerate(inputs):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = 1
    return input_ids, attention_mask, None, [b * width for b in range(len(inputs))]


def _packed_layout(inputs: list[list[int]]):
    """One (1, T) row of the inputs back to back, positions restarting per input; no mask."""
    starts = [0]
    for row in inputs[:-1]:
        starts.append(starts[-1] + len(row))
    input_ids = torch.tensor([[token for row in inputs for token in row]], dtype=torch.long)
    position_ids = torch.tensor([[position for row in inputs for position in range(len(row))]], dtype=torch.long)
    return input_ids, None, position_ids, starts
