"""The training options of the paper's real setup, checked on the CPU: mixed precision (float32 master
weights and AdamW state, forward and backward in the compute dtype), activation checkpointing, the
padding-free packed forward, a micro-batch of one long sequence (8k tokens; the paper's 32k on CUDA),
and the memory the sampler holds only while it samples (its compute-dtype weight copy, its KV cache,
FSDP2's gathered weights) and the AdamW state made before the first rollout.

At the paper's learning rates (5e-6) most AdamW steps are smaller than half a bf16 ulp of the
weight, so stepping bf16 parameters rounds them away; the master weights keep every update.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effreason.train import config_from_args, run
from effreason.train.loop import initialize_optimizer_state
from effreason.train.rollout import RolloutEngine, SamplingParams
from effreason.train.step import autocast_to

from train_helpers import tiny_run_flags


def _graded_by_parity(monkeypatch):
    """Random tiny models never solve a problem: grade by response parity so advantages are not all zero."""
    import effreason.train.data as data

    monkeypatch.setattr(data, "score_response", lambda text, problem, answer_kind="boxed": len(text) % 2 == 0)


def test_bf16_compute_keeps_every_update_at_the_papers_learning_rate(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    _graded_by_parity(monkeypatch)
    out = tmp_path / "bf16"
    run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=1, eval_problems=0, lr=5e-6,
                                        dtype="bfloat16", max_new_tokens=16)))
    start = load_file(tiny_model_dir / "model.safetensors")
    master = load_file(out / "checkpoint" / "model.safetensors")
    changed = sum(int((master[name] != start[name]).sum()) for name in start)
    assert changed >= 0.9 * sum(tensor.numel() for tensor in start.values())
    assert all(tensor.dtype == torch.float32 for tensor in master.values())
    exported = load_file(out / "model" / "model.safetensors")
    assert all(tensor.dtype == torch.bfloat16 for tensor in exported.values())
    assert json.loads((out / "model" / "config.json").read_text())["dtype"] == "bfloat16"


def test_bf16_compute_gives_the_float32_gradient(tiny_model_dir):
    """On one fixed micro-batch, the gradient of the policy loss under bf16 autocast points where the
    float32 one does (the fused LM head in bf16 too)."""
    from effreason.models import load_checkpoint
    from effreason.train.methods.rl import PolicyLoss
    from effreason.train.packing import build_micro_batch

    model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 90, (7,), generator=generator).tolist() for _ in range(4)]
    responses = [torch.randint(2, 90, (5 + 3 * i,), generator=generator).tolist() for i in range(4)]
    old = [[-4.0] * len(response) for response in responses]
    correct = torch.tensor([True, False, True, True])
    advantages = torch.tensor([0.5, -1.0, 0.25, 0.25])
    batch = build_micro_batch(prompts, responses, old, correct, advantages, slice(0, 4), 1, 2)
    gradients = {}
    for dtype in (torch.float32, torch.bfloat16):
        loss_module = PolicyLoss(model, group_size=2, paper_objective=True, temperature=1.0, lm_head_dtype=dtype,
                                 loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))
        model.zero_grad()
        with autocast_to(torch.device("cpu"), dtype):
            loss, _ = loss_module(batch, 0.2)
        loss.backward()
        gradients[dtype] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(gradients[torch.float32], gradients[torch.bfloat16], dim=0)
    assert cosine >= 0.99, float(cosine)


def _trainer(out, **settings):
    """A built trainer of the built-in miniature (the shipped warm start, the toy task) on one CPU thread."""
    from effreason.train import distributed
    from effreason.train.config import TrainConfig
    from effreason.train.loop import Trainer, seed_everything

    trainer = Trainer(TrainConfig(out=str(out), quiet=True, eval_problems=0, steps=1, device="cpu", cpu_threads=1,
                                  **settings), distributed.setup(torch.device("cpu")))
    seed_everything(0)
    trainer._build(None)
    return trainer


def _weight_change_of_one_update(trainer, rollout) -> torch.Tensor:
    """The flat float64 weight change of ``method.update(rollout)``; weights, AdamW and LR state put back after."""
    saved = [copy.deepcopy(part.state_dict()) for part in (trainer.model, trainer.optimizer, trainer.scheduler)]
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.method.update(rollout, trainer.config.alpha)
    change = torch.cat([(p.detach() - start).flatten().double() for p, start in zip(trainer.model.parameters(), before)])
    for part, state in zip((trainer.model, trainer.optimizer, trainer.scheduler), saved):
        part.load_state_dict(state)
    return change


@pytest.mark.slow
def test_bf16_compute_keeps_the_float32_update_on_real_rollouts(tmp_path):
    """Four rollouts of the warm start (8 prompts x 8 samples each), one update at the paper's lr 5e-6: the bf16-
    compute trainer's AdamW weight change points where the float32 trainer's does (median cosine >= 0.99; the
    worst rollout measured so far gives 0.97, bf16's rounding of the activations; bench/RESULTS.md). pi_old
    comes from the trainer (``--old-logprobs auto``): the bf16 sampler's own log-probs would let the PPO clip
    mask tokens where the sampler and the trainer's autocast disagree."""
    settings = dict(lr=5e-6, prompts_per_step=8)
    reference = _trainer(tmp_path / "float32", dtype="float32", **settings)
    mixed = _trainer(tmp_path / "bf16", dtype="bfloat16", **settings)
    assert mixed.method.module.on_policy and not reference.method.module.on_policy
    cosines = []
    for round_index in range(4):
        rollout = reference._sample(round_index)
        rollout.rewards = reference._score(rollout)
        changes = [_weight_change_of_one_update(trainer, rollout) for trainer in (reference, mixed)]
        assert all(bool((change != 0).double().mean() > 0.99) for change in changes)
        cosines.append(float(torch.nn.functional.cosine_similarity(*changes, dim=0)))
    assert sorted(cosines)[len(cosines) // 2] >= 0.99 and min(cosines) >= 0.95, cosines


def test_old_logprobs_from_the_trainer_are_its_own_forward(tiny_model_dir, toy_data_file, tmp_path):
    """``--old-logprobs trainer`` with two mini-batches: pi_old recomputed by a no-grad forward over the
    update's micro-batches, in rollout order, equals the float32 sampler's log-probs of the same tokens."""
    trainer = _trainer(tmp_path, model=str(tiny_model_dir), data=str(toy_data_file), group_size=2, prompts_per_step=4,
                       mini_batches=2, max_new_tokens=12, old_logprobs="trainer", micro_batch_tokens=40)
    assert trainer.method.recomputes_old_logprobs and not trainer.method.module.on_policy
    rollout = trainer._sample(0)
    recomputed = trainer.method._trainer_logprobs(rollout)
    assert len(trainer.method._mini_batches(rollout, torch.zeros(8))[0]) > 1  # the budget splits a mini-batch
    assert [len(row) for row in recomputed] == [len(row) for row in rollout.responses]
    for ours, sampler in zip(recomputed, rollout.trainer_logprobs):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(sampler), rtol=1e-4, atol=1e-5)


def test_on_policy_loss_is_the_loss_with_the_current_log_probs_as_old(tiny_model_dir):
    """``PolicyLoss(on_policy=True)`` (ratio 1) gives the loss and gradient of passing the current policy's
    detached log-probs as pi_old."""
    from effreason.models import load_checkpoint
    from effreason.train.methods.rl import PolicyLoss
    from effreason.train.packing import build_micro_batch

    model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 90, (5,), generator=generator).tolist() for _ in range(4)]
    responses = [torch.randint(2, 90, (4 + 2 * i,), generator=generator).tolist() for i in range(4)]
    placeholder = [[0.0] * len(response) for response in responses]
    batch = build_micro_batch(prompts, responses, placeholder, torch.tensor([True, False, True, False]),
                              torch.zeros(4), slice(0, 4), 1, 2)
    options = dict(group_size=2, paper_objective=True, temperature=1.0,
                   loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))
    current = PolicyLoss(model, **options)(batch, logprobs_only=True)
    with pytest.raises(ValueError, match="alpha"):
        PolicyLoss(model, **options)(batch)
    results = []
    for on_policy, old in ((True, batch.old_logprobs), (False, current)):
        model.zero_grad()
        loss, _ = PolicyLoss(model, on_policy=on_policy, **options)(dataclasses.replace(batch, old_logprobs=old), 0.2)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


def _two_step_run(tiny_model_dir, toy_data_file, out, **setting) -> tuple[dict, list]:
    """The checkpointed weights and the logged losses of a 2-step run with ``setting``."""
    run(config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, steps=2, eval_problems=0, max_new_tokens=16,
                                        **setting)))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(out / "checkpoint" / "model.safetensors"), losses


def test_gradient_checkpointing_changes_no_number(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    _graded_by_parity(monkeypatch)
    plain, plain_losses = _two_step_run(tiny_model_dir, toy_data_file, tmp_path / "plain", gradient_checkpointing=False)
    recomputed, recomputed_losses = _two_step_run(tiny_model_dir, toy_data_file, tmp_path / "recomputed",
                                                  gradient_checkpointing=True)
    assert plain_losses == recomputed_losses and plain_losses[0] != 0.0
    assert all(torch.equal(plain[name], recomputed[name]) for name in plain)


def test_a_packed_run_matches_a_padded_run(tiny_model_dir, toy_data_file, tmp_path, monkeypatch):
    _graded_by_parity(monkeypatch)
    _, padded = _two_step_run(tiny_model_dir, toy_data_file, tmp_path / "padded", packed_forward=False)
    _, packed = _two_step_run(tiny_model_dir, toy_data_file, tmp_path / "packed", packed_forward=True)
    assert packed == pytest.approx(padded, rel=1e-4, abs=1e-7)


PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
GREEDY = SamplingParams(n=2, temperature=0.0, max_tokens=12, seed=0)


def _token_ids(groups) -> list:
    return [[completion.token_ids for completion in group] for group in groups]


def test_the_sampler_reads_a_compute_dtype_copy_made_and_freed_per_call(tiny_model_dir):
    """With float32 master weights and bf16 compute the sampler samples from a bf16 copy (the same tokens as a
    bf16 model); with ``release_memory`` it exists only during ``generate``; the master weights are untouched."""
    from effreason.models import load_checkpoint

    master, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    bf16_model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="bfloat16")
    engine = RolloutEngine(master, pad_token_id=1, weights_dtype=torch.bfloat16, release_memory=True)
    expected = RolloutEngine(bf16_model, pad_token_id=1).generate(PROMPTS, GREEDY)
    assert engine.generate(PROMPTS, GREEDY) == expected
    copy = engine.weights.model
    assert all(p.device.type == "meta" for p in copy.parameters())
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # tied stays tied
    assert engine.sampler.runner.kv_cache is None and all(p.dtype == torch.float32 for p in master.parameters())
    with torch.no_grad():
        master.model.norm.weight.mul_(2.0)  # the next call copies the current weights
    assert engine.generate(PROMPTS, GREEDY) != expected


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
])
def test_a_kept_weight_copy_is_refreshed_in_place_after_an_optimizer_step(tiny_model_dir, device):
    """Without ``release_memory`` the bf16 copy and the KV cache stay allocated between calls: after an AdamW
    step of the float32 masters the copy holds their new values at the same addresses, samples what a bf16
    model of the stepped weights samples, and (CUDA) replays the decode graphs captured by the first call."""
    from effreason.models import load_checkpoint

    master, _, _ = load_checkpoint(tiny_model_dir, device=device, dtype="float32")
    engine = RolloutEngine(master, pad_token_id=1, weights_dtype=torch.bfloat16)
    first = engine.generate(PROMPTS, GREEDY)
    graphs = engine.sampler.runner.graphs
    captured = dict(graphs.graphs) if graphs is not None else {}
    assert (device == "cuda") == bool(captured)
    weights_copy, kv_cache = engine.weights.model, engine.sampler.runner.kv_cache
    addresses = [p.data_ptr() for p in weights_copy.parameters()]
    optimizer = torch.optim.AdamW(master.parameters(), lr=1e-2)
    for parameter in master.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    after = engine.generate(PROMPTS, GREEDY)
    assert [p.data_ptr() for p in weights_copy.parameters()] == addresses and engine.sampler.runner.kv_cache is kv_cache
    assert weights_copy.lm_head.weight is weights_copy.model.embed_tokens.weight
    masters = dict(master.named_parameters())
    for name, parameter in weights_copy.named_parameters():
        assert torch.equal(parameter, masters[name].detach().to(torch.bfloat16)), name
    assert engine.sampler.runner.graphs is graphs and all(graphs.graphs[size] is graph for size, graph in captured.items())
    stepped, _, _ = load_checkpoint(tiny_model_dir, device=device, dtype="bfloat16")
    stepped.load_state_dict(master.state_dict())
    assert after == RolloutEngine(stepped, pad_token_id=1).generate(PROMPTS, GREEDY) and after != first


def test_released_kv_cache_is_allocated_again_with_the_same_results(tiny_model_dir):
    from effreason.models import load_checkpoint

    model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    engine = RolloutEngine(model, pad_token_id=1, kv_cache_tokens=256, release_memory=True)
    first = _token_ids(engine.generate(PROMPTS, GREEDY))
    assert engine.sampler.runner.kv_cache is None and engine.sampler.runner.model.layers == []
    assert _token_ids(engine.generate(PROMPTS, GREEDY)) == first
    kept = RolloutEngine(model, pad_token_id=1, kv_cache_tokens=256)
    assert _token_ids(kept.generate(PROMPTS, GREEDY)) == first and kept.sampler.runner.kv_cache is not None


def test_optimizer_state_made_up_front_changes_no_step(tiny_model_dir):
    """AdamW state created before the first rollout (so the KV cache is sized after it exists) leaves every
    step as the lazily created state does."""
    from effreason.models import load_checkpoint

    weights = []
    for eager in (False, True):
        model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        if eager:
            initialize_optimizer_state(optimizer)
            assert all(float(state["step"]) == 0 and not state["exp_avg"].any() for state in optimizer.state.values())
            assert all(p.grad is None for p in model.parameters())
        for step in range(3):
            torch.manual_seed(step)
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
            optimizer.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(lazy, eager) for lazy, eager in zip(*weights))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_fsdp2_gathers_the_weights_once_per_rollout(tiny_model_dir):
    """Two gloo ranks, FSDP2: one rollout of 4 sequences x 24 greedy tokens runs one all-gather per FSDP2 group
    (two layers and the root), not one per decode step, and samples what the unsharded model samples."""
    worker = Path(__file__).resolve().parent / "fsdp2_sampling_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(tiny_model_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert report["decode_tokens"] == 4 * 24 and report["same_tokens"]
    assert report["unshards"] == report["sharded_groups"] == 3


def _long_sequence_loss(model_dir, num_tokens: int, *, packed: bool, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and flat gradient of one micro-batch holding a single sequence of ``num_tokens`` tokens (a 64-token
    prompt, the rest response), packed with activation checkpointing (the CUDA setting) or padded without; on CUDA
    under bf16 autocast, as the training loop runs it."""
    from effreason.models import load_checkpoint
    from effreason.train.loop import prepare_for_training
    from effreason.train.methods.rl import PolicyLoss
    from effreason.train.packing import build_micro_batch

    model, _, _ = load_checkpoint(model_dir, device=device, dtype="float32")
    prepare_for_training(model, gradient_checkpointing=packed, packed_forward=packed)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, 90, (64,), generator=generator).tolist()
    response = torch.randint(2, 90, (num_tokens - 64,), generator=generator).tolist()
    batch = build_micro_batch([prompt], [response], [[-4.0] * len(response)], torch.tensor([True]), torch.tensor([0.5]),
                              slice(0, 1), 1, 1, packed=packed).to(device)
    loss_module = PolicyLoss(model, group_size=1, paper_objective=False, temperature=1.0,
                             loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))
    with autocast_to(torch.device(device), torch.bfloat16 if device == "cuda" else torch.float32):
        loss, _ = loss_module(batch, 0.2)
    loss.backward()
    return loss.detach().cpu(), torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()


def test_a_packed_checkpointed_sequence_gives_the_padded_loss_and_gradient(tiny_model_dir):
    packed = _long_sequence_loss(tiny_model_dir, 1024, packed=True)
    padded = _long_sequence_loss(tiny_model_dir, 1024, packed=False)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(packed[1], padded[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("num_tokens, device", [
    (8192, "cpu"),
    pytest.param(32768, "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
])
def test_one_micro_batch_of_a_single_long_sequence(tiny_model_dir, num_tokens, device):
    """The paper's longest response (32k tokens) as one packed, checkpointed micro-batch: finite loss and gradient."""
    loss, gradient = _long_sequence_loss(tiny_model_dir, num_tokens, packed=True, device=device)
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(gradient).all()) and bool(gradient.abs().sum() > 0)
