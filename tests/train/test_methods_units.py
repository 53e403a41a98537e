"""The rs-sft and dpo methods of the training loop: selection, the DPO loss, the packed log-probs, updates,
whole runs (resumable, under torchrun)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from effreason.train import run
from effreason.train.config import TrainConfig, resolve_config
from effreason.train.distributed import DistributedContext
from effreason.train.methods.dpo import DirectPreferenceOptimization, dpo_loss, dpo_margins, select_preference_pair
from effreason.train.methods.rs_sft import RejectionSamplingSFT, select_shortest_correct
from effreason.train.methods.units import SampledGroup, TrainingUnit, pack_units, sequence_logprobs
from effreason.train.step import optimizer_steps

from train_helpers import crash_at_step

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("options, name", [(dict(dpo_beta=0.0), "dpo_beta"), (dict(baseline_epochs=0), "baseline_epochs"),
                                           (dict(baseline_epochs=1.5), "baseline_epochs"), (dict(method="ppo"), "method")])
def test_options_are_validated(options, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**options)


def test_dpo_gets_its_own_default_learning_rate():
    from effreason.train.config import DPO_DEFAULT_LR, resolve_config

    assert resolve_config({"method": "dpo"}).lr == DPO_DEFAULT_LR
    assert resolve_config({"method": "dpo", "lr": 1e-3}).lr == 1e-3
    assert resolve_config({"method": "rs-sft"}).lr == TrainConfig().lr


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


def unit_trainer(model, tokenizer, method_class, token_budget: int = 4096, **settings):
    """The parts of a ``Trainer`` a unit method uses, around ``model`` on one process."""
    config = TrainConfig(mini_batches=1, micro_batch_tokens=token_budget, grad_clip=1.0, **settings)
    trainer = SimpleNamespace(config=config, model=model, context=DistributedContext(), device="cpu",
                              pad_token_id=tokenizer.pad_token_id, compute_dtype=torch.float32, lm_head_dtype=None, packed_forward=False,
                              load_reference=lambda: fresh_copy_of(model).requires_grad_(False))
    method = method_class(trainer)
    trainer.trainable = method.module
    trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    return method


def fresh_copy_of(model):
    import copy

    return copy.deepcopy(model).eval()


def losses_over_steps(method, units, steps: int) -> list[float]:
    """``steps`` updates on the same units, through the method's own update (selection bypassed)."""
    losses = []
    for _ in range(steps):
        mini_batches = [method._weighted_batches(units)]
        result = optimizer_steps(method.trainer.trainable, method.trainer.optimizer, method.trainer.scheduler, mini_batches,
                                 lambda module, batch: module(batch), grad_clip=1.0)
        losses.append(result["loss"])
    return losses


def test_rs_sft_loss_goes_down_on_a_fixed_batch(tiny_model_dir):
    model, tokenizer = fresh_copy(tiny_model_dir)
    units = [TrainingUnit(unit.prompt_ids, unit.responses[:1]) for unit in fixed_units(tokenizer)]
    losses = losses_over_steps(unit_trainer(model, tokenizer, RejectionSamplingSFT), units, steps=6)
    assert losses[-1] < 0.8 * losses[0], losses


def test_dpo_loss_goes_down_on_a_fixed_batch(tiny_model_dir):
    model, tokenizer = fresh_copy(tiny_model_dir)
    losses = losses_over_steps(unit_trainer(model, tokenizer, DirectPreferenceOptimization), fixed_units(tokenizer), steps=6)
    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-5)  # policy == reference at the start
    assert losses[-1] < losses[0] - 0.05, losses


def test_micro_batching_leaves_the_dpo_gradient_unchanged(tiny_model_dir):
    gradients = []
    for budget in (64, 4096):
        model, tokenizer = fresh_copy(tiny_model_dir)
        method = unit_trainer(model, tokenizer, DirectPreferenceOptimization, token_budget=budget)
        model.lm_head.weight.data.add_(0.01)  # away from the reference, so the DPO gradient is not symmetric
        batches = method._weighted_batches(fixed_units(tokenizer))
        assert (len(batches) > 1) == (budget == 64)
        for batch, weight in batches:
            (method.loss(model, batch)[0] * weight).backward()
        gradients.append(model.model.embed_tokens.weight.grad.clone())
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ whole runs


def short_run_config(tiny_model_dir, out, method, **settings) -> TrainConfig:
    defaults = dict(steps=2, group_size=4, prompts_per_step=4, max_new_tokens=8, eval_problems=4, eval_max_new_tokens=8,
                    lr=1e-3, quiet=True)
    return TrainConfig(model=str(tiny_model_dir), out=str(out), method=method, **{**defaults, **settings})


@pytest.mark.parametrize("method, settings", [("rs-sft", {}), ("dpo", dict(baseline_epochs=2))])
def test_a_short_run_writes_the_training_loop_run_folder(method, settings, tiny_model_dir, tmp_path, monkeypatch):
    from effreason.models import resolve_model_dir
    from effreason.tasks.toy import ToyTask

    monkeypatch.setattr(ToyTask, "is_correct", lambda self, text, problem: True)  # random weights never solve a problem
    config = short_run_config(tiny_model_dir, tmp_path / method, method, **settings)
    run_dir = run(config)
    assert TrainConfig.from_json_file(run_dir / "config.json") == config
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert sum(m["optimizer_steps"] for m in metrics) > 0
    assert all(m["units"] <= config.prompts_per_step for m in metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method
    for which in ("before", "after"):
        assert summary[which]["num_problems"] == 4 and {"accuracy", "mean_tokens"} <= set(summary[which])
    assert resolve_model_dir(run_dir) == run_dir / "model"
    assert (run_dir / "checkpoint" / "state.json").exists()


def test_a_baseline_resumes_from_its_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from effreason.tasks.toy import ToyTask
    from effreason.train.loop import Trainer

    monkeypatch.setattr(ToyTask, "is_correct", lambda self, text, problem: True)
    whole = run(short_run_config(tiny_model_dir, tmp_path / "whole", "dpo", steps=3, eval_problems=0, checkpoint_every=1))
    original = Trainer._one_step
    crash_at_step(monkeypatch, 3)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        run(short_run_config(tiny_model_dir, crashed, "dpo", steps=3, eval_problems=0, checkpoint_every=1))
    monkeypatch.setattr(Trainer, "_one_step", original)
    run(resolve_config({"resume": str(crashed)}))

    first, second = load_file(whole / "model" / "model.safetensors"), load_file(crashed / "model" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_rs_sft_under_torchrun(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    flags = ["--model", str(tiny_model_dir), "--out", str(out), "--method", "rs-sft", "--steps", "2", "--group-size", "4",
             "--prompts-per-step", "4", "--max-new-tokens", "8", "--eval-problems", "4", "--eval-max-new-tokens", "8",
             "--mini-batches", "2", "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "effreason.train", *flags]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "rs-sft" and summary["world_size"] == 2 and summary["ranks_in_sync"] is True


def test_a_baseline_that_fails_before_its_first_step_leaves_no_folder(tiny_model_dir, tmp_path, monkeypatch):
    from effreason.train.methods.units import UnitMethod

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(UnitMethod, "update", fail)
    out = tmp_path / "rs-sft"
    with pytest.raises(RuntimeError, match="boom"):
        run(short_run_config(tiny_model_dir, out, "rs-sft"))
    assert not out.exists()
