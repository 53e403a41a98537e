"""Rejection-sampling SFT and DPO baselines: selection, the DPO loss, the packed log-probs, updates, whole runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from effreason.baselines import (
    DPOOptions,
    RSSFTOptions,
    dpo_loss,
    dpo_margins,
    run_dpo,
    run_rs_sft,
    select_preference_pair,
    select_shortest_correct,
)
from effreason.baselines.dpo import DirectPreferenceOptimization
from effreason.baselines.rs_sft import RejectionSamplingSFT
from effreason.baselines.runner import SampledGroup, TrainingUnit, pack_units, sequence_logprobs, train_on_units
from effreason.train.config import TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one intra-op thread than on two contended ones (a shared CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 1-layer random Qwen2 with the toy tokenizer. Half the vocabulary are extra stop tokens
    (generation config), so random samples end within a few tokens with ``finish_reason == "stop"``."""
    from effreason.tasks.toy import ToyTask
    from effreason.warmstart import WarmstartConfig, build_model, build_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer(ToyTask())
    model = build_model(WarmstartConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1), tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(8, len(tokenizer), 2)]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from effreason.models import load_checkpoint

    model, tokenizer, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    return model, tokenizer


def group(lengths: list[int], correct: list[bool]) -> SampledGroup:
    """Sample j is ``[10 * j + 1, ...]`` of the given length, so tests can tell samples apart."""
    responses = [[10 * j + t + 1 for t in range(length)] for j, length in enumerate(lengths)]
    return SampledGroup([5, 6, 7], responses, correct)


# ------------------------------------------------------------------------------ selection


def test_rs_sft_keeps_the_shortest_correct_sample():
    sampled = group([4, 2, 1, 2, 5], [True, True, False, True, True])
    unit = select_shortest_correct(sampled)
    assert unit.prompt_ids == [5, 6, 7]
    assert unit.responses == (sampled.responses[1],)  # the incorrect 1-token sample is ignored; first of the ties


def test_rs_sft_skips_a_prompt_without_correct_samples():
    assert select_shortest_correct(group([3, 2], [False, False])) is None


def test_dpo_pair_is_shortest_versus_longest_correct():
    sampled = group([3, 1, 6, 2, 9], [True, False, True, True, False])
    unit = select_preference_pair(sampled)
    assert unit.responses == (sampled.responses[3], sampled.responses[2])


@pytest.mark.parametrize("lengths, correct", [([3, 3, 5], [True, True, False]), ([2, 4], [True, False]), ([2, 4], [False, False])])
def test_dpo_needs_two_correct_lengths(lengths, correct):
    assert select_preference_pair(group(lengths, correct)) is None


# ------------------------------------------------------------------------------ the DPO loss


def test_dpo_loss_on_hand_computed_numbers():
    policy_chosen = torch.tensor([-1.0, -4.0, -2.5], dtype=torch.float64, requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -1.0, -7.0], dtype=torch.float64)
    reference_chosen = torch.tensor([-2.0, -2.0, -2.5], dtype=torch.float64)
    reference_rejected = torch.tensor([-2.0, -2.0, -7.0], dtype=torch.float64)
    beta = 0.5
    # margins: 0.5 * ((1) - (-1)) = 1;  0.5 * ((-2) - (1)) = -1.5;  0 (policy == reference)
    expected_margins = torch.tensor([1.0, -1.5, 0.0], dtype=torch.float64)
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.5)), math.log(2.0)], dtype=torch.float64)
    margins = dpo_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    losses = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    torch.testing.assert_close(margins.detach(), expected_margins, rtol=0, atol=1e-12)
    torch.testing.assert_close(losses.detach(), expected, rtol=0, atol=1e-12)
    losses.sum().backward()
    # d loss / d policy_chosen = -beta * sigmoid(-margin)
    torch.testing.assert_close(policy_chosen.grad, -beta * torch.sigmoid(-expected_margins), rtol=0, atol=1e-12)


def test_dpo_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="policy_chosen"):
        dpo_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3), 0.1)


@pytest.mark.parametrize("make, name", [(lambda: DPOOptions(beta=0.0), "beta"), (lambda: DPOOptions(epochs=0), "epochs"),
                                        (lambda: RSSFTOptions(epochs=1.5), "epochs")])
def test_options_are_validated(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ------------------------------------------------------------------------------ packed log-probs and updates


def fixed_units(tokenizer, num_prompts: int = 3) -> list[TrainingUnit]:
    """Prompts of different lengths, each with a short and a long response (odd lengths)."""
    vocab = len(tokenizer)
    generator = torch.Generator().manual_seed(1)
    units = []
    for index in range(num_prompts):
        prompt = torch.randint(5, vocab, (4 + 3 * index,), generator=generator).tolist()
        short = torch.randint(5, vocab, (3 + index,), generator=generator).tolist() + [tokenizer.eos_token_id]
        long = torch.randint(5, vocab, (11 + 2 * index,), generator=generator).tolist() + [tokenizer.eos_token_id]
        units.append(TrainingUnit(prompt, (short, long)))
    return units


def test_packed_sequence_logprobs_match_full_logits(tiny_model):
    model, tokenizer = tiny_model
    units = fixed_units(tokenizer)
    batches = pack_units(units, 2, token_budget=64, pad_token_id=tokenizer.pad_token_id)
    assert len(batches) > 1  # the small budget splits the pairs over micro-batches
    packed = torch.cat([sequence_logprobs(model, batch) for batch in batches]).detach()
    expected = []
    for unit in units:
        for response in unit.responses:
            ids = torch.tensor([unit.prompt_ids + response])  # (1, P + R)
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)  # (P + R - 1, V)
            targets = torch.tensor(response)
            expected.append(log_probs[len(unit.prompt_ids) - 1:].gather(1, targets[:, None]).sum())
    torch.testing.assert_close(packed, torch.stack(expected).float(), rtol=1e-5, atol=1e-4)


def fresh_copy(tiny_model_dir):
    from effreason.models import load_checkpoint

    model, tokenizer, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    return model.train(), tokenizer


def losses_over_steps(model, tokenizer, method, units, steps: int, token_budget: int = 4096) -> list[float]:
    config = TrainConfig(mini_batches=1, micro_batch_tokens=token_budget, grad_clip=1.0)
    method.prepare(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return [train_on_units(model, optimizer, scheduler, method, units, config, pad_token_id=tokenizer.pad_token_id,
                           device="cpu")["loss"] for _ in range(steps)]


def test_rs_sft_loss_goes_down_on_a_fixed_batch(tiny_model_dir):
    model, tokenizer = fresh_copy(tiny_model_dir)
    units = [TrainingUnit(unit.prompt_ids, unit.responses[:1]) for unit in fixed_units(tokenizer)]
    losses = losses_over_steps(model, tokenizer, RejectionSamplingSFT(RSSFTOptions()), units, steps=6)
    assert losses[-1] < 0.8 * losses[0], losses


def test_dpo_loss_goes_down_on_a_fixed_batch(tiny_model_dir):
    model, tokenizer = fresh_copy(tiny_model_dir)
    losses = losses_over_steps(model, tokenizer, DirectPreferenceOptimization(DPOOptions(beta=0.1)), fixed_units(tokenizer), steps=6)
    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-5)  # policy == reference at the start
    assert losses[-1] < losses[0] - 0.05, losses


def test_micro_batching_leaves_the_dpo_gradient_unchanged(tiny_model_dir):
    gradients = []
    for budget in (64, 4096):
        model, tokenizer = fresh_copy(tiny_model_dir)
        method = DirectPreferenceOptimization(DPOOptions(beta=0.1))
        method.prepare(model)
        model.lm_head.weight.data.add_(0.01)  # away from the reference, so the DPO gradient is not symmetric
        batches = pack_units(fixed_units(tokenizer), 2, budget, tokenizer.pad_token_id)
        total = sum(method.normaliser(batch) for batch in batches)
        for batch in batches:
            (method.loss(model, batch)[0] / total).backward()
        gradients.append(model.model.embed_tokens.weight.grad.clone())
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ whole runs


@pytest.mark.parametrize("run, options, name", [(run_rs_sft, RSSFTOptions(), "rs-sft"), (run_dpo, DPOOptions(epochs=2), "dpo")])
def test_a_short_run_writes_the_training_loop_run_folder(run, options, name, tiny_model_dir, tmp_path, monkeypatch):
    from effreason.models import resolve_model_dir
    from effreason.tasks.toy import ToyTask

    monkeypatch.setattr(ToyTask, "is_correct", lambda self, text, problem: True)  # random weights never solve a problem
    config = TrainConfig(model=str(tiny_model_dir), out=str(tmp_path / name), steps=2, group_size=4, prompts_per_step=3,
                         max_new_tokens=8, eval_problems=4, eval_max_new_tokens=8, lr=1e-3, quiet=True)
    run_dir = run(config, options)
    assert TrainConfig.from_json_file(run_dir / "config.json") == config
    assert json.loads((run_dir / "method.json").read_text()) == {"method": name, "options": vars(options)}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert sum(m["optimizer_steps"] for m in metrics) > 0
    assert all(m["units"] <= config.prompts_per_step for m in metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    for which in ("before", "after"):
        assert summary[which]["num_problems"] == 4 and {"accuracy", "mean_tokens"} <= set(summary[which])
    assert resolve_model_dir(run_dir) == run_dir / "model"
    assert not (run_dir / "checkpoint").exists()


def test_resume_is_refused(tiny_model_dir, tmp_path):
    config = TrainConfig(model=str(tiny_model_dir), out=str(tmp_path), resume=str(tmp_path))
    with pytest.raises(ValueError, match="resume"):
        run_dpo(config)


def test_a_baseline_that_fails_before_its_first_step_leaves_no_folder(tiny_model_dir, tmp_path, monkeypatch):
    from effreason.baselines import runner

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "one_step", fail)
    out = tmp_path / "rs-sft"
    config = TrainConfig(model=str(tiny_model_dir), out=str(out), steps=2, group_size=4, prompts_per_step=3,
                         max_new_tokens=8, eval_problems=2, eval_max_new_tokens=8, quiet=True)
    with pytest.raises(RuntimeError, match="boom"):
        run_rs_sft(config, RSSFTOptions())
    assert not out.exists()
