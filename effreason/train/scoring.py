"""Rollout -> per-sequence rewards and advantages for the chosen ``--reward`` and ``--advantage``.

``correct`` already includes the paper's rule that a truncated response is wrong. For the
paper's reward with RLOO the fused loss recomputes the same numbers from ``correct`` and
the lengths; these values are then only logged.
"""

from __future__ import annotations

import torch

from effreason import rewards as reward_functions
from effreason.advantages import ADVANTAGE_ESTIMATORS
from effreason.ops.segment import length_penalized_rloo

DAPO_CACHE_FRACTION = 0.25
"""DAPO's soft-punishment window as a fraction of the budget (the DAPO paper: 4k of 20k)."""


def sequence_rewards(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float) -> torch.Tensor:
    """(S,) float32 rewards of ``config.reward``; budgets (``l1-*``, ``dapo-overlong``) are ``config.budget``."""
    lengths = lengths.to(torch.float64)
    if config.reward == "paper":
        return reward_functions.length_penalized_reward(correct, lengths, config.group_size, alpha)
    if config.reward == "kimi":
        return reward_functions.kimi_length_reward(correct, lengths, config.group_size)
    if config.reward == "dapo-overlong":
        cache = max(1, int(config.budget * DAPO_CACHE_FRACTION))
        return reward_functions.dapo_overlong_reward(correct, lengths, config.budget, cache)
    targets = torch.full_like(lengths, float(config.budget))
    if config.reward == "l1-exact":
        return reward_functions.l1_exact_reward(correct, lengths, targets)
    return reward_functions.l1_max_reward(correct, lengths, targets)


def rewards_and_advantages(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) rewards and (S,) advantages of ``config.advantage`` over groups of ``config.group_size``."""
    if config.reward == "paper" and config.advantage == "rloo":
        return length_penalized_rloo(correct, lengths.to(torch.int64), config.group_size, alpha)
    rewards = sequence_rewards(correct, lengths, config, alpha)
    return rewards, ADVANTAGE_ESTIMATORS[config.advantage](rewards, config.group_size)


def truncated_importance_weights(trainer_logprobs: list[list[float]], sampler_logprobs: list[list[float]], cap: float) -> torch.Tensor:
    """Per-sequence truncated importance weights for the sampler/trainer mismatch, (S,).

    ``w_s = min(exp(mean_t(log pi_trainer(y_t) - log mu_sampler(y_t))), cap)``: the geometric mean
    of the per-token ratios (length-normalised, so long responses do not vanish), truncated at
    ``cap`` as in truncated importance sampling (Ionides 2008; Yao et al. 2025 for RL with
    fast samplers). The weight scales the sequence's advantage.
    """
    weights = []
    for trainer, sampler in zip(trainer_logprobs, sampler_logprobs):
        difference = torch.tensor(trainer, dtype=torch.float64) - torch.tensor(sampler, dtype=torch.float64)
        weights.append(float(torch.exp(difference.mean())) if difference.numel() else 1.0)
    return torch.tensor(weights, dtype=torch.float32).clamp_max(cap)
