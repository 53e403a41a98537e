"""Validation and layout of the per-sample tensors every reward function takes."""

from __future__ import annotations

import torch

from effreason._validation import check_bool, check_group_size, check_lengths, check_vector


def per_sample(correct: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (S,) bool ``correct`` and (S,) ``lengths``; return them with the lengths in float64."""
    check_bool("correct", check_vector("correct", correct))
    return correct, check_lengths("lengths", lengths, size=correct.numel()).to(torch.float64)


def grouped(correct: torch.Tensor, lengths: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and reshape to (G, group_size): bool correctness and float64 lengths."""
    correct, lengths = per_sample(correct, lengths)
    check_group_size(group_size, correct.numel())
    return correct.view(-1, group_size), lengths.view(-1, group_size)
