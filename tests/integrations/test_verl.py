"""``effreason.integrations.verl`` against verl's own core algorithms (``verl.trainer.ppo.core_algos``).

verl pins an older transformers than effreason's main environment, so these run where verl is
installed (a separate environment; see docs/integrations.md) and skip elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from effreason.advantages import rloo_advantages  # noqa: E402
from effreason.integrations import verl as effreason_verl  # noqa: E402
from effreason.rewards import length_penalized_reward  # noqa: E402

AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def actor_config(**overrides) -> ActorConfig:
    settings = dict(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2, clip_ratio_high=0.28)
    settings.update(overrides)
    return ActorConfig(**settings)


def policy_inputs(seed: int = 0, batch: int = 6, length: int = 13):
    """(B, T) log-probs off-policy enough to clip, per-token advantages and a ragged response mask."""
    generator = torch.Generator().manual_seed(seed)
    old_log_prob = -torch.rand(batch, length, generator=generator) * 3
    log_prob = old_log_prob + 0.4 * torch.randn(batch, length, generator=generator)
    advantages = torch.randn(batch, 1, generator=generator).expand(batch, length).clone()
    lengths = torch.tensor([13, 5, 1, 9, 0, 11])[:batch]
    response_mask = (torch.arange(length) < lengths.unsqueeze(1)).float()
    return old_log_prob, log_prob.requires_grad_(), advantages, response_mask


@pytest.mark.parametrize("loss_agg_mode", AGGREGATIONS)
def test_policy_loss_equals_vanilla_without_dual_clip(loss_agg_mode):
    """verl's vanilla loss with the dual clip out of reach (clip_ratio_c huge) is ours, value and gradient."""
    old_log_prob, log_prob, advantages, response_mask = policy_inputs()
    config = actor_config(clip_ratio_c=1e9)
    theirs, their_metrics = core_algos.compute_policy_loss_vanilla(
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=loss_agg_mode, config=config
    )
    (their_grad,) = torch.autograd.grad(theirs, log_prob)
    effreason_verl.register()
    ours, our_metrics = core_algos.get_policy_loss_fn(effreason_verl.POLICY_LOSS)(
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=loss_agg_mode, config=config
    )
    (our_grad,) = torch.autograd.grad(ours, log_prob)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-8)
    assert their_metrics["actor/pg_clipfrac"] > 0
    for name in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert our_metrics[name] == pytest.approx(their_metrics[name], rel=1e-5, abs=1e-7)


def test_policy_loss_differs_from_vanilla_only_by_the_dual_clip():
    """With verl's default clip_ratio_c = 3, vanilla caps -A * ratio for A < 0 at 3|A|; ours does not."""
    old_log_prob = torch.zeros(2, 3)
    log_prob = torch.tensor([[2.0, 0.0, 0.1], [2.0, 0.0, 0.1]])  # ratio e^2 > 3 on the first token
    advantages = torch.tensor([[-1.0] * 3, [1.0] * 3])
    response_mask = torch.ones(2, 3)
    config = actor_config(clip_ratio_high=0.2)
    vanilla, _ = core_algos.compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, "token-mean", config)
    ours, _ = effreason_verl.ppo_policy_loss(old_log_prob, log_prob, advantages, response_mask, "token-mean", config)
    uncapped = torch.exp(torch.tensor(2.0))  # -A * ratio at the first token of the A = -1 row
    assert float(ours - vanilla) == pytest.approx(float(uncapped - 3.0) / 6, rel=1e-6)


def test_paper_advantage_per_uid_group():
    """Shuffled groups (uids not contiguous): each group gets length_penalized_reward then RLOO."""
    generator = torch.Generator().manual_seed(1)
    group_size, num_groups, length = 4, 3, 20
    correct = torch.rand(group_size * num_groups, generator=generator) < 0.7
    lengths = torch.randint(1, length + 1, (group_size * num_groups,), generator=generator)
    uids = np.array([f"prompt-{row // group_size}" for row in range(group_size * num_groups)], dtype=object)
    order = torch.randperm(group_size * num_groups, generator=generator)
    response_mask = (torch.arange(length) < lengths[order].unsqueeze(1)).float()
    token_level_rewards = torch.zeros(len(order), length)
    token_level_rewards[torch.arange(len(order)), lengths[order] - 1] = correct[order].float()

    effreason_verl.register(alpha=0.3)
    estimator = core_algos.get_adv_estimator_fn(effreason_verl.ADVANTAGE_ESTIMATOR)
    advantages, returns = estimator(token_level_rewards=token_level_rewards, response_mask=response_mask,
                                    index=uids[order.numpy()], config=None)

    expected = rloo_advantages(length_penalized_reward(correct, lengths, group_size, 0.3), group_size)[order]
    torch.testing.assert_close(advantages, expected.unsqueeze(1) * response_mask)
    assert torch.equal(advantages, returns)


def test_alpha_zero_equals_verl_rloo_on_correctness():
    """With alpha = 0 the paper's reward is the 0/1 correctness, and the advantage is verl's own RLOO."""
    generator = torch.Generator().manual_seed(2)
    token_level_rewards = torch.zeros(8, 5)
    token_level_rewards[:, -1] = (torch.rand(8, generator=generator) < 0.5).float()
    response_mask = torch.ones(8, 5)
    uids = np.array(["a", "b"] * 4, dtype=object)
    ours, _ = effreason_verl.paper_rloo_advantage(token_level_rewards, response_mask, uids, alpha=0.0)
    theirs, _ = core_algos.compute_rloo_outcome_advantage(token_level_rewards, response_mask, uids)
    torch.testing.assert_close(ours, theirs)


def test_compute_score_grades_the_last_boxed_answer():
    assert effreason_verl.compute_score("toy", "so \\boxed{3}, no: \\boxed{41}", "41") == 1.0
    assert effreason_verl.compute_score("toy", "\\boxed{41} then \\boxed{3}", 41) == 0.0
    assert effreason_verl.compute_score("toy", "#### 41", "41", answer_kind="gsm8k") == 1.0
