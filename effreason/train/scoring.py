"""Rollout -> per-sequence rewards and advantages for the chosen ``--reward`` and ``--advantage``.

The reward is looked up by name in ``effreason.rewards.REWARDS``; its options are the
``TrainConfig`` fields it registered. ``correct`` already includes the paper's rule that a
truncated response is wrong. Where the fused ops implement the reward with RLOO
(``uses_fused_reward``), the fused loss recomputes the same numbers from ``correct`` and the
lengths; the values computed here are then only logged. A stateful reward's state for the next
step comes from ``next_reward_state``.
"""

from __future__ import annotations

import torch

from effreason.advantages import ADVANTAGE_ESTIMATORS
from effreason.ops.segment import length_penalized_rloo
from effreason.rewards import REWARDS, RewardInputs


def uses_fused_reward(config) -> bool:
    """Whether the fused ops compute ``config.reward`` and its advantage themselves: a reward whose
    registry entry is ``fused`` (the paper's) with the RLOO advantage."""
    return REWARDS[config.reward].fused and config.advantage == "rloo"


def _reward_call(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float, budget: int | None, state: dict | None):
    """The registered reward, its inputs and its option values."""
    reward = REWARDS[config.reward]
    inputs = RewardInputs(correct, lengths, config.group_size, config.budget if budget is None else budget, state or {})
    return reward, inputs, reward.option_values(config, alpha=alpha)


def sequence_rewards(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float, *,
                     budget: int | None = None, state: dict | None = None) -> torch.Tensor:
    """(S,) float32 rewards of ``config.reward`` with its options from ``config``; ``alpha`` is this
    step's (the alpha controller moves it away from ``config.alpha``), ``budget`` the step's length
    budget (default ``config.budget``) and ``state`` what the reward carried from the previous step."""
    reward, inputs, options = _reward_call(correct, lengths, config, alpha, budget, state)
    return reward(inputs, **options)


def next_reward_state(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float, *,
                      budget: int | None = None, state: dict | None = None) -> dict:
    """The state ``config.reward`` carries into the next step from this step's samples (``{}`` when stateless)."""
    reward, inputs, options = _reward_call(correct, lengths, config, alpha, budget, state)
    return {} if reward.next_state is None else reward.next_state(inputs, **options)


def rewards_and_advantages(correct: torch.Tensor, lengths: torch.Tensor, config, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) rewards and (S,) advantages of ``config.advantage`` over groups of ``config.group_size``."""
    if uses_fused_reward(config):
        options = REWARDS[config.reward].option_values(config, alpha=alpha)
        return length_penalized_rloo(correct, lengths.to(torch.int64), config.group_size, **options)
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
