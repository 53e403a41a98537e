"""Group-relative advantages: RLOO (the paper's), GRPO, Dr. GRPO and DLER's batch-wise normalisation.

Rewards (S,) come in groups of ``group_size`` consecutive samples of one prompt; each
function returns float32 advantages (S,), computed in float64.
"""

from __future__ import annotations

import torch

from effreason._validation import check_finite, check_group_size, check_vector

GRPO_STD_EPS = 1e-6


def _grouped_rewards(rewards: torch.Tensor, group_size: int, minimum_group: int) -> torch.Tensor:
    check_finite("rewards", check_vector("rewards", rewards))
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating tensor, got dtype {rewards.dtype}")
    check_group_size(group_size, rewards.numel(), minimum=minimum_group)
    return rewards.to(torch.float64).view(-1, group_size)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024; Kool et al. 2019)::

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean_j r_j)

    Advantages sum to zero within each group. ``group_size`` (k) must be >= 2.
    """
    grouped = _grouped_rewards(rewards, group_size, minimum_group=2)  # (G, k)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1).to(torch.float32)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = GRPO_STD_EPS) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): ``A_i = (r_i - mean) / (std + eps)``, sample std (ddof = 1)."""
    grouped = _grouped_rewards(rewards, group_size, minimum_group=2)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return (centered / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1).to(torch.float32)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``A_i = r_i - mean_j r_j``, no std division."""
    grouped = _grouped_rewards(rewards, group_size, minimum_group=1)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1).to(torch.float32)


def batch_std_advantages(rewards: torch.Tensor, group_size: int, eps: float = GRPO_STD_EPS) -> torch.Tensor:
    """Group mean, batch std: DLER's batch-wise reward normalisation (Liu et al. 2025, arXiv 2510.15110;
    REINFORCE++-baseline, Hu et al. 2025)::

        c_i = r_i - mean_{j in group(i)} r_j
        A_i = (c_i - mean_batch c) / (std_batch c + eps)          (sample std, ddof = 1)

    The group mean removes the prompt's difficulty; dividing by one std of the whole batch rather than
    by each group's keeps groups of nearly equal rewards from being blown up. Needs >= 2 samples.
    """
    centered = dr_grpo_advantages(rewards, group_size).to(torch.float64)  # (S,)
    if centered.numel() < 2:
        raise ValueError(f"rewards must hold >= 2 samples for a batch std, got {centered.numel()}")
    return ((centered - centered.mean()) / (centered.std() + eps)).to(torch.float32)


ADVANTAGE_ESTIMATORS = {
    "rloo": rloo_advantages,
    "grpo": grpo_advantages,
    "dr-grpo": dr_grpo_advantages,
    "group-mean-batch-std": batch_std_advantages,
}
