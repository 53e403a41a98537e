"""Rollout sequences -> micro-batches bounded by a token budget, whole prompt groups each.

A micro-batch is a right-padded (B, L) batch of ``prompt + response[:-1]`` rows (the last
response token is never an input). The hidden state at position ``t`` predicts token
``t + 1``, so response token ``i`` of row ``b`` is predicted at ``P_b - 1 + i``; those
positions are gathered into the packed (N, H) layout of the loss ops, sequence after
sequence, with ``cu_seqlens`` marking the boundaries. The budget bounds ``B * L`` (padded
tokens), so a micro-batch never costs more memory than the budget allows; each holds whole
groups because the paper's reward compares the samples of one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MicroBatch:
    """Model inputs and packed loss inputs of whole groups.

    input_ids, attention_mask: (B, L); gather_index: (N,) flat indices into (B * L);
    targets: (N,) response tokens; cu_seqlens: (B + 1,); old_logprobs, sampler_logprobs: (N,);
    correct: (B,) bool; advantages: (B,) float32; sequence_slice: the rows of the rollout it holds.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    gather_index: torch.Tensor
    targets: torch.Tensor
    cu_seqlens: torch.Tensor
    old_logprobs: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    sequence_slice: slice

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.targets.numel()

    def to(self, device) -> "MicroBatch":
        moved = {name: getattr(self, name).to(device) for name in
                 ("input_ids", "attention_mask", "gather_index", "targets", "cu_seqlens", "old_logprobs", "correct", "advantages")}
        return MicroBatch(**moved, sequence_slice=self.sequence_slice)


def plan_micro_batches(row_lengths: list[int], group_size: int, token_budget: int) -> list[slice]:
    """Consecutive whole groups per micro-batch while ``rows * longest_row <= token_budget``
    (a single group over the budget still gets its own micro-batch)."""
    if len(row_lengths) % group_size:
        raise ValueError(f"the number of rows ({len(row_lengths)}) must be divisible by group_size ({group_size})")
    plans, start, longest = [], 0, 0
    for group_start in range(0, len(row_lengths), group_size):
        group_longest = max(row_lengths[group_start:group_start + group_size])
        rows = group_start + group_size - start
        if group_start > start and rows * max(longest, group_longest) > token_budget:
            plans.append(slice(start, group_start))
            start, longest = group_start, 0
        longest = max(longest, group_longest)
    plans.append(slice(start, len(row_lengths)))
    return plans


def build_micro_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    old_logprobs: list[list[float]],
    correct: torch.Tensor,
    advantages: torch.Tensor,
    rows: slice,
    pad_token_id: int,
) -> MicroBatch:
    """The :class:`MicroBatch` of rollout rows ``rows`` (every response non-empty)."""
    row_prompts, row_responses = prompts[rows], responses[rows]
    inputs = [p + r[:-1] for p, r in zip(row_prompts, row_responses)]
    width = max(len(row) for row in inputs)
    input_ids = torch.full((len(inputs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(inputs), width), dtype=torch.long)
    gather = []
    for b, (row, prompt, response) in enumerate(zip(inputs, row_prompts, row_responses)):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = 1
        first = b * width + len(prompt) - 1
        gather.append(torch.arange(first, first + len(response)))
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
    )
