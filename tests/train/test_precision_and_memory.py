"""The training options of the paper's real setup, checked on the CPU: mixed precision (float32 master
weights and AdamW state, forward and backward in the compute dtype), activation checkpointing and the
padding-free packed forward, and a micro-batch of one long sequence (8k tokens; the paper's 32k on CUDA).

At the paper's learning rates (5e-6) most AdamW steps are smaller than half a bf16 ulp of the
weight, so stepping bf16 parameters rounds them away; the master weights keep every update.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from effreason.train import config_from_args, run
from effreason.train.step import _autocast

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
        with _autocast(torch.device("cpu"), dtype):
            loss, _ = loss_module(batch, 0.2)
        loss.backward()
        gradients[dtype] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(gradients[torch.float32], gradients[torch.bfloat16], dim=0)
    assert cosine >= 0.99, float(cosine)


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
    with _autocast(torch.device(device), torch.bfloat16 if device == "cuda" else torch.float32):
        loss, _ = loss_module(batch, 0.2)
    loss.backward()
    return loss.detach().cpu(), torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()


def test_a_packed_checkpointed_sequence_gives_the_padded_loss_and_gradient(tiny_model_dir):
    packed = _long_sequence_loss(tiny_model_dir, 1024, packed=True)
    padded = _long_sequence_loss(tiny_model_dir, 1024, packed=False)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(packed[1], padded[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("num_tokens, device", [
    (8192, "cpu"),
    pytest.param(32768, "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
])
def test_one_micro_batch_of_a_single_long_sequence(tiny_model_dir, num_tokens, device):
    """The paper's longest response (32k tokens) as one packed, checkpointed micro-batch: finite loss and gradient."""
    loss, gradient = _long_sequence_loss(tiny_model_dir, num_tokens, packed=True, device=device)
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(gradient).all()) and bool(gradient.abs().sum() > 0)
