"""The per-sequence part of the fused loss: the paper's reward and its RLOO advantage in one pass.

``length_penalized_rloo`` runs the native segment kernel (``torch.ops.effreason.length_penalized_rloo``,
CPU C++ or CUDA) when ``effreason._C`` has it for the tensors' device, and the pure-torch
composition of ``effreason.rewards`` and ``effreason.advantages`` otherwise. Both give the same numbers.
"""

from __future__ import annotations

import torch

from effreason._backends import has_native, native_cuda_usable
from effreason._validation import check_bool, check_group_size, check_lengths, check_unit_interval, check_vector
from effreason.advantages import rloo_advantages
from effreason.rewards import length_penalized_reward


if has_native():

    @torch.library.register_fake("effreason::length_penalized_rloo")
    def _length_penalized_rloo_fake(correct, lengths, group_size, alpha):
        return correct.new_empty(correct.shape, dtype=torch.float32), correct.new_empty(correct.shape, dtype=torch.float32)


def native_segment_available(device: torch.device) -> bool:
    """Whether the native segment kernel exists for ``device``."""
    if device.type == "cpu":
        return has_native()
    return device.type == "cuda" and native_cuda_usable(device)


def length_penalized_rloo_torch(
    correct: torch.Tensor, lengths: torch.Tensor, group_size: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference: ``length_penalized_reward`` followed by ``rloo_advantages``."""
    rewards = length_penalized_reward(correct, lengths, group_size, alpha)
    return rewards, rloo_advantages(rewards, group_size)


def length_penalized_rloo(
    correct: torch.Tensor,
    lengths: torch.Tensor,
    group_size: int,
    alpha: float,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards and RLOO advantages, both float32 (S,), for groups of ``group_size`` consecutive samples.

    ``r_i = 1 - alpha * sigmoid((len_i - mean_c) / (std_c + 1e-7))`` for correct samples, 0 otherwise
    (mean/std over the group's correct samples), then ``A_i = r_i - mean_{j != i} r_j``.
    ``backend``: ``"auto"`` (native when built for the device), ``"native"`` or ``"torch"``.
    """
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
    use_native = backend == "native" or (backend == "auto" and native_segment_available(correct.device))
    if not use_native:
        return length_penalized_rloo_torch(correct, lengths, group_size, alpha)
    if not native_segment_available(correct.device):
        raise ValueError(f"backend='native' requested but effreason._C has no kernel for device {correct.device}")
    check_bool("correct", check_vector("correct", correct))
    check_lengths("lengths", lengths, size=correct.numel())
    check_group_size(group_size, correct.numel(), minimum=2)
    alpha = check_unit_interval("alpha", alpha)
    if lengths.device != correct.device:
        raise ValueError(f"lengths must be on {correct.device}, got {lengths.device}")
    return torch.ops.effreason.length_penalized_rloo(correct.contiguous(), lengths.contiguous(), group_size, alpha)
