"""Group filters (dynamic sampling, GFPO) on hand-computed cases, and a step's rollout collection with refills."""

from types import SimpleNamespace

import pytest
import torch

from effreason.train.collect import collect_rollout
from effreason.train.distributed import DistributedContext
from effreason.train.group_filters import (
    GROUP_FILTERS, keep_most_token_efficient, keep_shortest, keep_varied_groups, kept_rows,
)
from effreason.train.rollout import Rollout


def test_dynamic_sampling_drops_groups_of_equal_rewards():
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.5, 0.5 + 1e-6]])
    assert keep_varied_groups(rewards, torch.ones(4, 2), 0).tolist() == [[False, False], [True, True], [False, False], [True, True]]
    assert kept_rows(rewards.reshape(-1), torch.ones(8), 2, GROUP_FILTERS["dynamic-sampling"], 0) == [[2, 3], [6, 7]]


def test_gfpo_keeps_the_shortest_earlier_sample_first_on_ties():
    lengths = torch.tensor([[30, 10, 20, 10]])
    assert keep_shortest(torch.zeros(1, 4), lengths, 2).tolist() == [[False, True, False, True]]
    assert keep_shortest(torch.zeros(1, 4), lengths, 3).tolist() == [[False, True, True, True]]
    assert kept_rows(torch.zeros(8), torch.tensor([30, 10, 20, 10, 5, 6, 7, 8]), 4, GROUP_FILTERS["gfpo-shortest"], 2) == [[1, 3], [4, 5]]


def test_gfpo_token_efficiency_keeps_the_highest_reward_per_token():
    # reward / len = 0.1, 0.05, 0, 0.025
    rewards, lengths = torch.tensor([[1.0, 1.0, 0.0, 1.0]]), torch.tensor([[10, 20, 5, 40]])
    assert keep_most_token_efficient(rewards, lengths, 2).tolist() == [[True, True, False, False]]


def test_gfpo_keep_count_is_checked():
    with pytest.raises(ValueError, match="keep_count must be in"):
        keep_shortest(torch.zeros(1, 4), torch.ones(1, 4), 5)


def rollout_of(lengths: list[int], correct: list[bool], group_size: int) -> Rollout:
    return Rollout(prompts=[[7]] * len(lengths), responses=[[1] * n for n in lengths], trainer_logprobs=[[0.0] * n for n in lengths],
                   sampler_logprobs=[[0.0] * n for n in lengths], correct=torch.tensor(correct),
                   lengths=torch.tensor(lengths), truncated=torch.zeros(len(lengths), dtype=torch.bool), group_size=group_size)


def test_select_and_concatenate_keep_every_field_aligned():
    first, second = rollout_of([1, 2, 3, 4], [True, False, True, False], 2), rollout_of([5, 6], [False, True], 2)
    first.rewards, second.rewards = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0])
    both = Rollout.concatenate([first, second])
    picked = both.select([[1], [4]])
    assert picked.group_size == 1 and picked.lengths.tolist() == [2, 5] and [len(r) for r in picked.responses] == [2, 5]
    assert picked.correct.tolist() == [False, False] and picked.rewards.tolist() == [0.0, 0.0]
    assert both.select([]).responses == []


def config_of(**settings):
    defaults = dict(group_filter="none", prompts_per_step=2, gfpo_keep=1, dynamic_sampling_rounds=3, mini_batches=1)
    return SimpleNamespace(**{**defaults, **settings})


def test_dynamic_sampling_refills_the_step_from_fresh_prompts():
    """Rounds of 2 prompts x 2 samples; rewards = correctness. Round 0 keeps one group, round 1 none, round 2 one:
    the step trains on 2 groups after 3 rounds and 6 prompts."""
    rounds = [([3, 4, 5, 6], [True, False, True, True]), ([1, 2, 3, 4], [True, True, False, False]),
              ([7, 8, 9, 9], [False, True, False, False])]
    collected = collect_rollout(lambda index: rollout_of(*rounds[index], 2), lambda r: r.correct.float(),
                                config_of(group_filter="dynamic-sampling"), DistributedContext())
    assert (collected.rounds, collected.prompts, collected.sampled_tokens) == (3, 6, 18 + 10 + 33)
    assert collected.trained.lengths.tolist() == [3, 4, 7, 8] and collected.kept_fraction == pytest.approx(4 / 12)


def test_dynamic_sampling_stops_after_its_extra_rounds():
    collected = collect_rollout(lambda index: rollout_of([1, 1, 2, 2], [True, True, False, False], 2), lambda r: r.correct.float(),
                                config_of(group_filter="dynamic-sampling", dynamic_sampling_rounds=2), DistributedContext())
    assert collected.rounds == 3 and collected.trained.responses == []


def test_gfpo_trains_on_the_kept_samples_of_every_group():
    collected = collect_rollout(lambda index: rollout_of([4, 2, 3, 1, 9, 8, 7, 6], [True] * 8, 4), lambda r: r.correct.float(),
                                config_of(group_filter="gfpo-shortest", gfpo_keep=2), DistributedContext())
    assert collected.rounds == 1 and collected.trained.group_size == 2 and collected.trained.lengths.tolist() == [2, 1, 7, 6]
