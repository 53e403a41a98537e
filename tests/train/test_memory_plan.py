"""The memory plan (``effreason.train.memory_plan``): ``--dry-run`` on a 1.5B-shaped config with no weights, the
activation formula against what autograd keeps, the plan against the measured CPU peak, and the sizes a run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effreason.train.__main__ import main
from effreason.train.config import TrainConfig, resolve_config
from effreason.train.memory_plan import (ModelShape, PlanSettings, layer_activation_bytes, plan_for_config,
                                         plan_memory)

WORKER = Path(__file__).resolve().parent / "memory_peak_worker.py"
QWEN25_15B = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1536, intermediate_size=8960,
    num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
    max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
)


@pytest.fixture
def config_only_1_5b(tmp_path, tiny_model_dir):
    """A folder with a Qwen2.5-1.5B-shaped ``config.json`` and a tokenizer, no weights."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_15B))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    return tmp_path


@pytest.mark.parametrize("gib, fits", [(80, True), (8, False)])
def test_dry_run_of_the_1_5b_preset_fits_80_gib_not_8(config_only_1_5b, capsys, gib, fits):
    status = main(["--preset", "paper-1.5b", "--model", str(config_only_1_5b), "--dry-run", "--device-memory", str(gib)])
    out = capsys.readouterr().out
    assert status == (0 if fits else 1)
    assert ("verdict: fits" in out) == fits and "1.78B parameters" in out
    for part in ("master weights", "AdamW state", "gradients", "sampler weights (bfloat16)", "KV cache per token",
                 "activations per micro-batch token", "micro-batch budget"):
        assert part in out, part
    assert not list(config_only_1_5b.glob("*.safetensors"))


def test_the_1_5b_plan_holds_a_32k_sequence_in_both_phases(config_only_1_5b):
    paper = dict(preset="paper-1.5b", model=str(config_only_1_5b), device_memory=80.0)
    plan = plan_for_config(resolve_config(paper))
    assert plan.fits and plan.settings.compute_dtype == torch.bfloat16 and plan.settings.gradient_checkpointing
    assert plan.master_weight_bytes == plan.gradient_bytes == 4 * 1_777_088_000
    assert plan.optimizer_bytes == 8 * 1_777_088_000 and plan.sampler_weight_bytes == 2 * 1_777_088_000
    assert plan.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2
    assert plan.kv_cache_tokens >= 32512 and plan.micro_batch_tokens >= 32511
    assert max(plan.rollout_peak_bytes, plan.update_peak_bytes) <= 0.9 * 80 * 2**30
    smaller = plan_for_config(resolve_config(dict(paper, gpu_memory_utilization=0.5)))
    assert smaller.kv_cache_tokens < plan.kv_cache_tokens and smaller.micro_batch_tokens < plan.micro_batch_tokens


def _saved_bytes_per_token(model, batch, dtype) -> float:
    """Bytes autograd keeps for backward per input token (distinct storages, parameters excluded)."""
    from effreason.train.methods.rl import PolicyLoss
    from effreason.train.step import autocast_to

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    loss = PolicyLoss(model, group_size=2, paper_objective=True, temperature=1.0, lm_head_dtype=dtype,
                      loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast_to(torch.device("cpu"), dtype):
        loss(batch, 0.2)
    return sum(saved.values()) / batch.input_ids.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_layer_formula_is_what_autograd_keeps(dtype, padded):
    """The per-layer count of the module docstring against ``saved_tensors_hooks`` on the miniature: the four
    layers account for the saved bytes but the final norm and the LM-head input (at most 16 H per token) and
    autocast's weight casts (a few hundred bytes per token at 4096 tokens), within 5%."""
    from effreason.models import load_checkpoint
    from effreason.train.packing import build_micro_batch

    model, _, _ = load_checkpoint(None, device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(0)
    rows, width = 16, 256
    prompts = [torch.randint(4, 70, (16,), generator=generator).tolist() for _ in range(rows)]
    responses = [torch.randint(4, 70, (width - 15 - (row if padded else 0),), generator=generator).tolist() for row in range(rows)]
    batch = build_micro_batch(prompts, responses, [[-4.0] * len(r) for r in responses], torch.tensor([True, False] * 8),
                              torch.zeros(rows), slice(0, rows), 1, 2)
    measured = _saved_bytes_per_token(model, batch, dtype)
    settings = _cpu_settings(compute_dtype=dtype, lm_head_dtype=dtype)
    shape = ModelShape.from_model(model)
    formula = shape.num_layers * layer_activation_bytes(shape, settings, width if padded else 0)
    assert formula <= measured <= 1.05 * (formula + 16 * shape.hidden_size), (formula, measured)


def _cpu_settings(**overrides) -> PlanSettings:
    settings = dict(device_type="cpu", device_bytes=64 << 30, memory_utilization=0.9, overhead_bytes=0,
                    compute_dtype=torch.float32, lm_head_dtype=torch.float32, gradient_checkpointing=False,
                    packed_forward=False, flash_attention=False, reference_model=False, rollout_sequences=128,
                    rollout_sequence_tokens=768, eval_sequences=504, eval_sequence_tokens=832, mini_batch_rows=128,
                    micro_batch_tokens=None, truncated_sampling=False)
    settings.update(overrides)
    return PlanSettings(**settings)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak resident set")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_dry_run_estimate_is_within_25_percent_of_the_measured_cpu_peak(checkpointing):
    """The plan's update peak for the miniature (float32, padded micro-batches of 8192 tokens, rows of up to 256
    tokens) against the measured one: in a fresh process (``memory_peak_worker.py``, which explains the method),
    the growth of the resident set during one update plus the parameters and AdamW state resident before it."""
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(WORKER), "32", "256", "64", str(int(checkpointing))],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["tokens"] == 8192
    measured_peak = measured["peak"] - measured["before"] + measured["tensors"]
    plan = plan_for_config(TrainConfig(device="cpu", max_prompt_tokens=64, max_new_tokens=193, micro_batch_tokens=8192,
                                       gradient_checkpointing=checkpointing))
    assert plan.settings.longest_row == 256 and plan.update_tokens == 8192
    assert abs(plan.update_peak_bytes - measured_peak) <= 0.25 * measured_peak, (plan.update_peak_bytes, measured_peak)


def test_the_miniature_keeps_its_cpu_sizes():
    plan = plan_for_config(TrainConfig(device="cpu"))
    assert (plan.micro_batch_tokens, plan.kv_cache_tokens, plan.sampler_weight_bytes) == (8192, 65536, 0)
    assert plan.fits and plan.sampler_resident


def test_the_sampler_stays_allocated_only_where_it_fits_next_to_the_update(config_only_1_5b):
    """1.5B on 80 GiB: a small rollout (8 prompts x 8, 4k tokens) keeps the sampler's weights and KV cache
    between rollouts, with a smaller but still large micro-batch budget; the paper's rollout fills the device
    with KV cache, so it is freed before each update."""
    paper = dict(preset="paper-1.5b", model=str(config_only_1_5b), device_memory=80.0)
    small = plan_for_config(resolve_config(dict(paper, prompts_per_step=8, max_new_tokens=4096, eval_problems=0)))
    assert small.fits and small.sampler_resident and small.kept_peak_bytes <= small.limit_bytes
    assert 16384 <= small.micro_batch_tokens < small.fitting_micro_batch_tokens
    assert small.kept_peak_bytes == small.update_peak_bytes + small.sampler_weight_bytes + \
        small.kv_cache_tokens * small.kv_bytes_per_token
    full = plan_for_config(resolve_config(paper))
    assert full.fits and not full.sampler_resident and full.kept_peak_bytes > full.limit_bytes
    assert full.micro_batch_tokens == full.fitting_micro_batch_tokens
    assert "freed before each update" in full.summary() and "kept between rollouts" in small.summary()


def test_cuda_sizes_come_from_the_plan():
    """On CUDA the budget is the largest that fits, a budget asked for is kept, and the KV cache takes at most
    what the rollout and the evaluation can use."""
    shape = ModelShape.from_config(_qwen2_config())
    cuda = dict(device_type="cuda", device_bytes=80 << 30, overhead_bytes=1 << 30, compute_dtype=torch.bfloat16,
                lm_head_dtype=torch.bfloat16, gradient_checkpointing=True, packed_forward=True, flash_attention=True)
    plan = plan_memory(shape, _cpu_settings(**cuda))
    assert plan.micro_batch_tokens == plan.fitting_micro_batch_tokens > 8192 and plan.fits
    assert plan.kv_cache_tokens == max(128 * 768, 504 * 832)
    asked = plan_memory(shape, _cpu_settings(**cuda, micro_batch_tokens=4096))
    assert asked.micro_batch_tokens == 4096 and asked.update_peak_bytes < plan.update_peak_bytes


def test_fsdp2_shards_the_training_state_and_gathers_the_sampler_weights():
    shape = ModelShape.from_config(_qwen2_config())
    alone = plan_memory(shape, _cpu_settings())
    sharded = plan_memory(shape, _cpu_settings(world_size=4, sharded=True))
    assert sharded.optimizer_bytes == alone.optimizer_bytes // 4 and sharded.master_weight_bytes == alone.master_weight_bytes // 4
    assert alone.sampler_weight_bytes == 0 and sharded.sampler_weight_bytes == 4 * shape.num_parameters


def _qwen2_config():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=2048)
