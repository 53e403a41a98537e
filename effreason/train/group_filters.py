"""Group filters (``--group-filter``): which graded samples of a step the update trains on.

A filter sees the rewards and lengths of every sampled group, ``(G, n)`` with ``n = --group-size``,
and returns a ``(G, n)`` bool mask of the samples to keep: whole groups (kept or dropped), or the
same number of samples from every group. It runs after the reward (which always sees the whole
sampled group) and before the advantage (computed over what is kept).

* ``none``: keep everything.
* ``dynamic-sampling``: drop the groups whose rewards are all equal, which carry no
  group-relative signal; the loop refills the step with fresh prompts (DAPO, Yu et al. 2025, arXiv
  2503.14476; DLER, Liu et al. 2025, arXiv 2510.15110).
* ``gfpo-shortest``, ``gfpo-token-efficiency``: sample a larger group (``--group-size`` = G'), keep
  its ``--gfpo-keep`` = k shortest samples, or the k of highest reward per token (GFPO, Shrivastava
  et al. 2025, arXiv 2508.09726); the others get no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EQUAL_REWARDS_TOLERANCE = 1e-9


@dataclass(frozen=True)
class GroupFilter:
    """``keep(rewards (G, n), lengths (G, n), keep_count) -> (G, n) bool``; ``whole_groups``: keeps
    or drops whole groups; ``refills``: dropped groups are replaced by sampling fresh prompts."""

    name: str
    keep: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    whole_groups: bool
    refills: bool


def keep_all(rewards: torch.Tensor, lengths: torch.Tensor, keep_count: int) -> torch.Tensor:
    return torch.ones(rewards.shape, dtype=torch.bool)


def keep_varied_groups(rewards: torch.Tensor, lengths: torch.Tensor, keep_count: int) -> torch.Tensor:
    """DAPO's dynamic sampling: keep a group unless ``max_j r_j - min_j r_j <= 1e-9``."""
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values  # (G,)
    return (spread > EQUAL_REWARDS_TOLERANCE).unsqueeze(1).expand(rewards.shape).clone()


def _keep_top(scores: torch.Tensor, keep_count: int) -> torch.Tensor:
    """Per row, the ``keep_count`` highest ``scores`` (the earlier sample wins a tie)."""
    if not 1 <= keep_count <= scores.shape[1]:
        raise ValueError(f"keep_count must be in [1, {scores.shape[1]}], got {keep_count}")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep_count]  # (G, k)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    return mask.scatter_(1, order, True)


def keep_shortest(rewards: torch.Tensor, lengths: torch.Tensor, keep_count: int) -> torch.Tensor:
    """GFPO by length: the ``keep_count`` shortest samples of every group."""
    return _keep_top(-lengths.to(torch.float64), keep_count)


def keep_most_token_efficient(rewards: torch.Tensor, lengths: torch.Tensor, keep_count: int) -> torch.Tensor:
    """GFPO by token efficiency: the ``keep_count`` samples of highest ``reward / max(len, 1)``."""
    return _keep_top(rewards.to(torch.float64) / lengths.to(torch.float64).clamp_min(1.0), keep_count)


GROUP_FILTERS = {
    group_filter.name: group_filter
    for group_filter in (
        GroupFilter("none", keep_all, whole_groups=True, refills=False),
        GroupFilter("dynamic-sampling", keep_varied_groups, whole_groups=True, refills=True),
        GroupFilter("gfpo-shortest", keep_shortest, whole_groups=False, refills=False),
        GroupFilter("gfpo-token-efficiency", keep_most_token_efficient, whole_groups=False, refills=False),
    )
}
"""Every group filter by name: the choices of ``--group-filter``."""


def kept_rows(rewards: torch.Tensor, lengths: torch.Tensor, group_size: int, group_filter: GroupFilter,
              keep_count: int) -> list[list[int]]:
    """The filter applied to a rollout's (S,) rewards and lengths: the kept sample indices of every kept group, in order."""
    mask = group_filter.keep(rewards.view(-1, group_size), lengths.view(-1, group_size), keep_count)  # (G, n)
    rows = torch.arange(rewards.numel()).view(-1, group_size)
    return [rows[group][mask[group]].tolist() for group in range(mask.shape[0]) if bool(mask[group].any())]
