"""Input checks shared by the RL math: each raises ValueError naming the argument and what was expected."""

from __future__ import annotations

import torch


def check_vector(name: str, tensor, *, length: int | None = None) -> torch.Tensor:
    """Require a 1-D tensor (of ``length`` elements when given)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if length is not None and tensor.numel() != length:
        raise ValueError(f"{name} must have {length} elements, got {tensor.numel()}")
    return tensor


def check_bool(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Require a boolean tensor."""
    if tensor.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {tensor.dtype}")
    return tensor


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Require no NaN or inf (floating tensors only)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return tensor


def check_lengths(name: str, lengths: torch.Tensor, *, size: int) -> torch.Tensor:
    """Require ``size`` non-negative, finite sequence lengths (integer or floating)."""
    check_vector(name, lengths, length=size)
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"{name} must be an integer or floating tensor, got dtype {lengths.dtype}")
    check_finite(name, lengths)
    if lengths.numel() and bool((lengths < 0).any()):
        raise ValueError(f"{name} must be >= 0, got a negative length")
    return lengths


def check_group_size(group_size: int, num_samples: int, *, minimum: int = 1) -> int:
    """Require an integer ``group_size >= minimum`` dividing ``num_samples``."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ValueError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size < minimum:
        raise ValueError(f"group_size must be >= {minimum}, got {group_size}")
    if num_samples % group_size != 0:
        raise ValueError(
            f"the number of samples ({num_samples}) must be divisible by group_size ({group_size})"
        )
    return group_size


def check_unit_interval(name: str, value: float) -> float:
    """Require a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_cu_seqlens(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Require cumulative boundaries ``0 = cu[0] <= cu[1] <= ... <= cu[S] = num_tokens`` (int32/int64)."""
    check_vector("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have at least 2 elements (S + 1 with S >= 1), got {cu_seqlens.numel()}")
    if int(cu_seqlens[0]) != 0:
        raise ValueError(
            f"cu_seqlens must start with 0 (S + 1 boundaries 0, end of sequence 1, ..., {num_tokens}), "
            f"got cu_seqlens[0] = {int(cu_seqlens[0])}"
        )
    if int(cu_seqlens[-1]) != num_tokens:
        raise ValueError(f"cu_seqlens must end at the number of tokens ({num_tokens}), got cu_seqlens[-1] = {int(cu_seqlens[-1])}")
    if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    return cu_seqlens


def check_correct_per_sequence(correct, cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Require valid ``cu_seqlens`` for ``num_tokens`` tokens and a bool ``correct`` with one entry per sequence."""
    check_cu_seqlens(cu_seqlens, num_tokens)
    check_vector("correct", correct)
    num_sequences = cu_seqlens.numel() - 1
    if correct.numel() != num_sequences:
        raise ValueError(
            f"correct must have one entry per sequence (S = len(cu_seqlens) - 1 = {num_sequences}), got {correct.numel()}"
        )
    return check_bool("correct", correct)
