"""Packed PPO loss, KL terms and aggregation modes."""

import math

import pytest
import torch

from effreason import losses

CU = torch.tensor([0, 2, 5, 5, 6])  # lengths 2, 3, 0, 1


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", [1 / 6] * 6),
        ("seq-mean-token-mean", [1 / 8, 1 / 8, 1 / 12, 1 / 12, 1 / 12, 1 / 4]),
        ("seq-mean-token-sum", [1 / 4] * 6),
        ("seq-mean-token-sum-norm", [1 / 12] * 6),  # norm length defaults to the longest (3)
    ],
)
def test_aggregation_weights(mode, expected):
    got = losses.aggregation_weights(CU, mode, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_aggregation_weights_mask_and_norm_length():
    mask = torch.tensor([True, False, False, False, False, True])
    got = losses.aggregation_weights(CU, "seq-mean-token-mean", token_mask=mask, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor([0.25, 0, 0, 0, 0, 0.25], dtype=torch.float64))
    all_masked = losses.aggregation_weights(CU, "token-mean", token_mask=torch.zeros(6, dtype=torch.bool))
    assert torch.equal(all_masked, torch.zeros(6))
    normed = losses.aggregation_weights(CU, "seq-mean-token-sum-norm", norm_length=10, dtype=torch.float64)
    torch.testing.assert_close(normed, torch.full((6,), 1 / 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="loss_agg must be one of"):
        losses.aggregation_weights(CU, "mean")


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(losses.kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    k3 = losses.kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(k3, torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]))
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_penalty(logp, ref, "k2")


def test_kl_shaped_token_advantages():
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    got = losses.kl_shaped_token_advantages(torch.tensor([1.0, 2.0, 0.0, -1.0]), CU, kl, kl_coef=0.1)
    expected = torch.tensor([1 - 0.3, 1 - 0.2, 2 - 1.2, 2 - 0.9, 2 - 0.5, -1 - 0.6])
    torch.testing.assert_close(got, expected)


def test_ppo_surrogate_clipping():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = losses.ppo_clipped_surrogate(logp, old, adv, (0.2, 0.3))
    torch.testing.assert_close(loss, torch.tensor([-1.3, -0.5, 1.5, 0.8]))
    assert clipped.tolist() == [True, False, False, True]


def test_policy_loss_on_policy_gradient_is_advantage_weighted():
    torch.manual_seed(0)
    logp = torch.randn(6, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    loss, stats = losses.policy_loss(logp, adv, CU, loss_agg="seq-mean-token-mean")
    loss.backward()
    weights = losses.aggregation_weights(CU, "seq-mean-token-mean", dtype=torch.float64)
    torch.testing.assert_close(logp.grad, -weights * losses.expand_to_tokens(adv, CU))
    assert stats["clip_fraction"] == 0 and stats["ratio_mean"] == 1


def test_policy_loss_kl_in_loss_and_in_reward():
    logp = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    ref = torch.full((6,), -0.1, dtype=torch.float64)
    adv = torch.zeros(4, dtype=torch.float64)
    loss, stats = losses.policy_loss(logp, adv, CU, ref_logprobs=ref, kl_coef=0.5, kl_estimator="k1", loss_agg="token-mean")
    torch.testing.assert_close(loss, torch.tensor(0.05, dtype=torch.float64))
    torch.testing.assert_close(stats["kl_mean"], torch.tensor(0.1, dtype=torch.float64))
    shaped, _ = losses.policy_loss(
        logp, adv, CU, old_logprobs=logp.detach(), ref_logprobs=ref, kl_coef=0.5, kl_estimator="k1",
        kl_in_reward=True, loss_agg="seq-mean-token-sum",
    )
    # per-token advantages -0.05 * tokens-to-go: (2, 1), (3, 2, 1), (1); loss = -sum(A_t) / S
    torch.testing.assert_close(shaped, torch.tensor(0.05 * 10 / 4, dtype=torch.float64))


def test_policy_loss_all_masked_is_zero():
    logp = torch.randn(6, requires_grad=True)
    loss, stats = losses.policy_loss(logp, torch.ones(4), CU, token_mask=torch.zeros(6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logp.grad, torch.zeros(6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(advantages=torch.ones(3)), "advantages must have 4"),
        (dict(cu_seqlens=torch.tensor([0, 2, 7])), r"cu_seqlens must end at the number of tokens \(6\), got cu_seqlens\[-1\] = 7"),
        (dict(cu_seqlens=torch.tensor([2, 4, 6])), r"cu_seqlens must start with 0 .*got cu_seqlens\[0\] = 2"),
        (dict(cu_seqlens=torch.tensor([0, 3, 2, 6])), "non-decreasing"),
        (dict(cu_seqlens=torch.tensor([0.0, 6.0])), "int32 or int64"),
        (dict(old_logprobs=torch.zeros(5)), "old_logprobs must have 6"),
        (dict(kl_coef=0.1), "ref_logprobs is required"),
        (dict(kl_coef=0.1, ref_logprobs=torch.zeros(6), kl_in_reward=True), "kl_in_reward needs old_logprobs"),
        (dict(clip_eps=(1.2, 0.2)), "clip_eps"),
        (dict(loss_agg="sum"), "loss_agg"),
    ],
)
def test_policy_loss_bad_input(kwargs, message):
    args = dict(logprobs=torch.zeros(6), advantages=torch.ones(4), cu_seqlens=CU)
    if "cu_seqlens" in kwargs:
        args["advantages"] = torch.ones(kwargs["cu_seqlens"].numel() - 1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        losses.policy_loss(**args)
