"""Micro-batch planning, the packed hidden states and gradient accumulation over micro-batches."""

import pytest
import torch

from effreason.ops.reference import ppo_loss, token_logprobs
from effreason.train.packing import build_micro_batch, plan_micro_batches
from effreason.train.methods.rl import PolicyLoss, micro_batch_share
from effreason.train.step import packed_hidden_states

from train_helpers import save_tiny_qwen2


def test_plan_keeps_whole_groups_within_budget():
    lengths = [5, 9, 3, 4, 20, 2, 7, 7, 1, 1]
    plans = plan_micro_batches(lengths, group_size=2, token_budget=20)
    assert [p.start for p in plans][0] == 0 and plans[-1].stop == len(lengths)
    assert all(a.stop == b.start for a, b in zip(plans, plans[1:]))
    for plan in plans:
        assert (plan.stop - plan.start) * max(lengths[plan]) <= 20
    # the group (4, 6) is too long for the budget as a whole: it is split by rows
    assert [(p.start, p.stop) for p in plans] == [(0, 2), (2, 4), (4, 5), (5, 6), (6, 8), (8, 10)]
    assert plan_micro_batches([3] * 8, group_size=4, token_budget=100) == [slice(0, 8)]
    with pytest.raises(ValueError, match="group_size"):
        plan_micro_batches(lengths[:3], group_size=2, token_budget=20)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("packing_model")
    save_tiny_qwen2(folder, seed=3)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)


def _rollout(num_rows: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for row in range(num_rows):
        prompt_length = 3 + row // 2 % 3  # rows of a group share the prompt
        prompts.append(torch.randint(2, 90, (prompt_length,), generator=generator).tolist())
        responses.append(torch.randint(2, 90, (1 + (row * 7) % 11,), generator=generator).tolist())
    old = [[-1.0 - 0.01 * t for t in range(len(r))] for r in responses]
    return prompts, responses, old


def test_packed_hidden_states_match_unpadded_forward(tiny_model):
    prompts, responses, old = _rollout(6)
    batch = build_micro_batch(prompts, responses, old, torch.ones(6, dtype=torch.bool), torch.zeros(6), slice(0, 6), pad_token_id=1)
    packed = packed_hidden_states(tiny_model, batch)  # (N, H)
    expected = []
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([prompt + response[:-1]])
        hidden = tiny_model.model(input_ids=ids).last_hidden_state[0]
        expected.append(hidden[len(prompt) - 1:])
    torch.testing.assert_close(packed, torch.cat(expected), rtol=1e-9, atol=1e-9)
    assert batch.targets.tolist() == [t for r in responses for t in r]
    assert batch.cu_seqlens.tolist()[-1] == batch.num_tokens


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_accumulation_equals_whole_batch(tiny_model, loss_agg):
    """Gradients summed over share-weighted micro-batches equal the whole mini-batch's gradient."""
    prompts, responses, old = _rollout(8, seed=1)
    advantages = torch.linspace(-1, 1, 8)
    correct = torch.ones(8, dtype=torch.bool)
    options = dict(clip_eps=(0.2, 0.2), loss_agg=loss_agg, norm_length=16.0 if loss_agg.endswith("norm") else None)
    policy = PolicyLoss(tiny_model, group_size=2, paper_objective=False, loss_options=options, temperature=1.0)

    def gradient(slices):
        tiny_model.zero_grad()
        batches = [build_micro_batch(prompts, responses, old, correct, advantages, s, 1) for s in slices]
        for batch in batches:
            loss, _ = policy(batch, alpha=0.2)
            (loss * micro_batch_share(batch, batches, loss_agg)).backward()
        return torch.cat([p.grad.flatten() for p in tiny_model.parameters()])

    whole = gradient([slice(0, 8)])
    split = gradient([slice(0, 2), slice(2, 6), slice(6, 8)])
    torch.testing.assert_close(split, whole, rtol=1e-7, atol=1e-10)


def test_paper_objective_with_a_split_group_equals_the_whole_batch(tiny_model):
    """A group split by rows falls back to precomputed advantages: same gradient as the fused group reward."""
    from effreason.ops.segment import length_penalized_rloo

    prompts, responses, old = _rollout(8, seed=4)
    correct = torch.tensor([True, False, True, True, False, False, True, True])
    lengths = torch.tensor([len(r) for r in responses])
    _, advantages = length_penalized_rloo(correct, lengths, 2, 0.3)
    policy = PolicyLoss(tiny_model, group_size=2, paper_objective=True, loss_options=dict(loss_agg="seq-mean-token-mean"), temperature=1.0)

    def gradient(slices):
        tiny_model.zero_grad()
        batches = [build_micro_batch(prompts, responses, old, correct, advantages, s, 1, group_size=2) for s in slices]
        for batch in batches:
            loss, _ = policy(batch, alpha=0.3)
            (loss * micro_batch_share(batch, batches, "seq-mean-token-mean")).backward()
        return [b.whole_groups for b in batches], torch.cat([p.grad.flatten() for p in tiny_model.parameters()])

    whole_flags, whole = gradient([slice(0, 8)])
    split_flags, split = gradient([slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 8)])
    assert whole_flags == [True] and split_flags == [True, False, False, True]
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-9)


def test_policy_loss_matches_reference_on_logprobs(tiny_model):
    prompts, responses, old = _rollout(4, seed=2)
    advantages = torch.tensor([0.5, -0.5, 1.0, -1.0])
    batch = build_micro_batch(prompts, responses, old, torch.ones(4, dtype=torch.bool), advantages, slice(0, 4), 1)
    policy = PolicyLoss(tiny_model, group_size=2, paper_objective=False, loss_options=dict(loss_agg="seq-mean-token-mean"), temperature=0.7)
    loss, _ = policy(batch, alpha=0.0)
    hidden = packed_hidden_states(tiny_model, batch)
    expected, _ = ppo_loss(hidden, tiny_model.lm_head.weight, batch.targets, batch.cu_seqlens, advantages,
                           temperature=0.7, old_logprobs=batch.old_logprobs, loss_agg="seq-mean-token-mean")
    torch.testing.assert_close(loss.to(expected.dtype), expected)
    logprobs = token_logprobs(hidden, tiny_model.lm_head.weight, batch.targets, 0.7)
    assert logprobs.shape == batch.targets.shape


@pytest.mark.parametrize("paper_objective", [True, False])
def test_packed_and_padded_forwards_give_the_same_loss_and_gradients(tiny_model, paper_objective):
    """One (1, T) row with restarting positions equals the right-padded (B, L) batch (float32, 1e-5)."""
    prompts, responses, old = _rollout(6, seed=5)
    correct = torch.tensor([True, False, True, True, False, True])
    advantages = torch.linspace(-1, 1, 6)
    policy = PolicyLoss(tiny_model, group_size=2, paper_objective=paper_objective,
                        loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"), temperature=1.0)
    results = []
    for packed in (False, True):
        tiny_model.zero_grad()
        batch = build_micro_batch(prompts, responses, old, correct, advantages, slice(0, 6), 1, 2, packed=packed)
        loss, _ = policy(batch, alpha=0.3)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in tiny_model.parameters()])))
    (padded_loss, padded_grad), (packed_loss, packed_grad) = results
    assert batch.input_ids.shape[0] == 1 and batch.attention_mask is None
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-5, atol=1e-6)
