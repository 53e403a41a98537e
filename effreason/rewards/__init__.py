"""Sequence-level rewards, registered by name (``--reward NAME``): the paper's and the length rewards users compare it with.

* ``paper``: ``length_penalized_reward`` (Arora & Zanette 2025), option ``alpha``; the fused ops implement it.
* ``kimi``: ``kimi_length_reward`` (Kimi k1.5), option ``kimi_weight``.
* ``dapo-overlong``: ``dapo_overlong_reward`` (DAPO), option ``dapo_cache_fraction``.
* ``l1-exact``, ``l1-max``: ``l1_exact_reward``, ``l1_max_reward`` (L1), options ``l1_beta`` (both), ``l1_delta`` (max).
* ``truncation``: ``truncation_reward`` (DLER, ThinkPrune): 0 over the length limit.
* ``laser``, ``laser-d``: ``laser_step_reward`` (LASER, LASER-D), options ``laser_target``, ``laser_bonus``;
  ``laser-d`` carries its adaptive per-difficulty targets from step to step.
* ``alp``: ``alp_reward`` (ALP), option ``alp_beta``.
* ``shorterbetter``: ``shorterbetter_reward`` (ShorterBetter), options ``shorterbetter_alpha``, ``shorterbetter_beta``.

Every function takes per-sample tensors of shape (S,) where consecutive blocks of
``group_size`` samples answer the same prompt, and returns float32 rewards (S,).
Statistics are computed in float64. ``effreason.rewards.registry`` says how to add a reward.
"""

from effreason.rewards.registry import (
    REWARDS,
    Reward,
    RewardInputs,
    RewardOption,
    register_reward,
    reward_options,
    rewards_using,
)
from effreason.rewards.paper import STD_EPS, length_penalized_reward
from effreason.rewards.kimi import kimi_length_reward
from effreason.rewards.dapo import dapo_overlong_reward
from effreason.rewards.l1 import l1_exact_reward, l1_max_reward
from effreason.rewards.truncation import truncation_reward
from effreason.rewards.laser import choose_band_targets, laser_step_reward
from effreason.rewards.alp import alp_reward
from effreason.rewards.shorterbetter import sample_optimal_lengths, shorterbetter_reward

__all__ = [
    "REWARDS", "Reward", "RewardInputs", "RewardOption", "register_reward", "reward_options", "rewards_using",
    "STD_EPS", "length_penalized_reward", "kimi_length_reward", "dapo_overlong_reward", "l1_exact_reward", "l1_max_reward",
    "truncation_reward", "laser_step_reward", "choose_band_targets", "alp_reward", "sample_optimal_lengths",
    "shorterbetter_reward",
]
