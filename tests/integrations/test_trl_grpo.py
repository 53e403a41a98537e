"""``effreason.integrations.trl.GRPOTrainer`` against the real ``trl.GRPOTrainer`` on the CPU.

Same trainer, same inputs: TRL's ``compute_loss`` and ours give the same loss, gradients and
metrics for every supported ``loss_type``; two training steps from the same seed give the same
losses and gradients; at a 32k vocabulary ours needs less peak memory for the loss.
Tolerance (float32 on the CPU): losses and gradients within ``2e-6 * max(1, max |TRL's|)``.
"""

from __future__ import annotations

import re

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402  (after the importorskip: datasets comes with trl)

from effreason.integrations.trl import GRPOTrainer, paper_reward  # noqa: E402
from integration_helpers import peak_allocated_bytes, tiny_qwen2, toy_rows  # noqa: E402

RELATIVE_TOLERANCE = 2e-6


def grpo_config(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=4, max_completion_length=24,
        max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        disable_tqdm=True, bf16=False, beta=0.0, gradient_checkpointing=False,
    )
    settings.update(overrides)
    return trl.GRPOConfig(**settings)


def digit_reward(completions, **_):
    """A reward that random models earn too: the share of digits in the completion."""
    texts = [completion[-1]["content"] for completion in completions]
    return [sum(char.isdigit() for char in text) / max(len(text), 1) for text in texts]


def make_trainer(trainer_class, tokenizer, output_dir, model=None, **config):
    model = model if model is not None else tiny_qwen2(tokenizer, output_dir / "model")
    return trainer_class(
        model=model, reward_funcs=[paper_reward(0.2, num_generations=4), digit_reward],
        args=grpo_config(output_dir, **config), train_dataset=Dataset.from_list(toy_rows(8)), processing_class=tokenizer,
    )


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    scale = max(1.0, float(theirs.abs().max()))
    error = float((ours - theirs).abs().max())
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max |ours - TRL| = {error:.3g} (scale {scale:.3g})"


# ----------------------------------------------------------------------------- one loss call


def loss_inputs(model, tokenizer, *, num_sequences=6, prompt_length=5, completion_length=11, seed=0):
    """A micro-batch as ``_generate_and_score_completions`` makes it: left-padded prompts, right-padded
    completions of different lengths (one empty), off-policy old and reference log-probs."""
    generator = torch.Generator().manual_seed(seed)
    vocab_size = model.config.vocab_size
    prompt_ids = torch.randint(4, vocab_size, (num_sequences, prompt_length), generator=generator)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0
    prompt_ids[0, :2] = tokenizer.pad_token_id
    completion_ids = torch.randint(4, vocab_size, (num_sequences, completion_length), generator=generator)
    lengths = torch.tensor([completion_length, 7, 1, 4, 0, 9])[:num_sequences]
    completion_mask = (torch.arange(completion_length) < lengths.unsqueeze(1)).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    with torch.no_grad():
        input_ids, attention_mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
        logits = model(input_ids, attention_mask=attention_mask).logits[:, prompt_length - 1 : -1]  # (B, C, V)
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def noisy_logps():
        return (logps + 0.3 * torch.randn(logps.shape, generator=generator)) * completion_mask

    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.randn(num_sequences, generator=generator),
        "old_per_token_logps": noisy_logps(), "ref_per_token_logps": noisy_logps(),
        "num_items_in_batch": completion_mask.sum() * 3,
    }


def loss_and_gradients(compute_loss, trainer, inputs):
    trainer.model.zero_grad()
    loss = compute_loss(trainer, trainer.model, inputs)
    loss.backward()
    gradients = {name: param.grad.clone() for name, param in trainer.model.named_parameters() if param.grad is not None}
    metrics = {name: values.pop() for name, values in trainer._metrics["train"].items() if values}
    return loss.detach(), gradients, metrics


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_compute_loss_matches_trl(loss_type, tokenizer, tmp_path):
    trainer = make_trainer(
        GRPOTrainer, tokenizer, tmp_path, loss_type=loss_type, beta=0.04, use_bias_correction_kl=False,
        epsilon_high=0.28, temperature=0.7, gradient_accumulation_steps=2, steps_per_generation=4,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    inputs = loss_inputs(trainer.model, tokenizer)

    their_loss, their_grads, their_metrics = loss_and_gradients(trl.GRPOTrainer.compute_loss, trainer, inputs)
    our_loss, our_grads, our_metrics = loss_and_gradients(GRPOTrainer.compute_loss, trainer, inputs)

    assert_close(our_loss, their_loss, "loss")
    assert their_grads.keys() == our_grads.keys() and their_grads
    for name in their_grads:
        assert_close(our_grads[name], their_grads[name], name)
    assert their_metrics["clip_ratio/region_mean"] > 0  # the clipped branch is exercised
    for metric in ("entropy", "kl", "clip_ratio/region_mean"):
        assert our_metrics[metric] == pytest.approx(their_metrics[metric], rel=1e-5, abs=1e-6), metric


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loss_type": "cispo"}, "loss_type='cispo'"),
        ({"loss_type": "grpo", "importance_sampling_level": "sequence"}, "importance_sampling_level='token'"),
        ({"beta": 0.04, "use_bias_correction_kl": True}, "use_bias_correction_kl=False"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile=1.0"),
        ({"delta": 2.0}, "delta=None"),
        ({"entropy_coef": 0.01}, "entropy_coef=0.0"),
    ],
)
def test_options_without_an_exact_equivalent_raise(options, message, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_trainer(GRPOTrainer, tokenizer, tmp_path, **options)


# ----------------------------------------------------------------------------- training steps


class Recording:
    """Keeps each step's loss and gradients (before clipping)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.steps.append({"loss": loss.detach().clone(), "advantages": inputs["advantages"].clone()})
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.steps[-1]["gradients"] = {name: param.grad.clone() for name, param in model.named_parameters()}
        return loss


def train_two_steps(trainer_class, warmstart_folder, tokenizer, output_dir):
    """Two steps on the warm start with the paper's objective (see docs/integrations.md); the
    second step reuses the first step's completions (num_iterations=2), so its ratio is not 1."""
    from transformers import AutoModelForCausalLM

    recording = type(f"Recording{trainer_class.__name__}", (Recording, trainer_class), {})
    trainer = make_trainer(
        recording, tokenizer, output_dir, model=AutoModelForCausalLM.from_pretrained(warmstart_folder),
        loss_type="grpo", scale_rewards="none", beta=0.001, use_bias_correction_kl=False, num_iterations=2,
        max_completion_length=96, learning_rate=2e-4,
    )
    trainer.steps = []
    trainer.train()
    return trainer


def test_two_training_steps_match_trl(warmstart_folder, tokenizer, tmp_path):
    theirs = train_two_steps(trl.GRPOTrainer, warmstart_folder, tokenizer, tmp_path / "trl")
    ours = train_two_steps(GRPOTrainer, warmstart_folder, tokenizer, tmp_path / "ours")
    assert len(theirs.steps) == len(ours.steps) == 2
    for step, (their_step, our_step) in enumerate(zip(theirs.steps, ours.steps), start=1):
        assert torch.equal(our_step["advantages"], their_step["advantages"]), f"step {step}: different rollouts"
        assert their_step["advantages"].abs().max() > 0
        assert_close(our_step["loss"], their_step["loss"], f"step {step} loss")
        for name, gradient in their_step["gradients"].items():
            assert_close(our_step["gradients"][name], gradient, f"step {step} {name}")
    their_log, our_log = theirs.state.log_history[0], ours.state.log_history[0]
    assert our_log["rewards/paper_reward/mean"] == their_log["rewards/paper_reward/mean"] > 0
    assert our_log["entropy"] == pytest.approx(their_log["entropy"], rel=1e-4)


# ----------------------------------------------------------------------------- memory


def test_peak_memory_below_trl_at_32k_vocabulary(tokenizer, tmp_path):
    """The loss and its backward on 4 x 256 completion tokens, V = 32,000, H = 16: TRL's LM head
    projects a (tokens, min(V, 32768)) tile, ours 32 MiB chunks."""
    model = tiny_qwen2(tokenizer, tmp_path / "model", vocab_size=32_000, hidden_size=16)
    trainer = make_trainer(GRPOTrainer, tokenizer, tmp_path, model=model, loss_type="grpo")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = loss_inputs(trainer.model, tokenizer, num_sequences=4, prompt_length=8, completion_length=256)
    inputs["completion_mask"][:] = 1

    def loss_step(compute_loss):
        return lambda: compute_loss(trainer, trainer.model, inputs).backward()

    loss_step(GRPOTrainer.compute_loss)()  # warm up both paths once
    loss_step(trl.GRPOTrainer.compute_loss)()
    theirs = peak_allocated_bytes(loss_step(trl.GRPOTrainer.compute_loss))
    ours = peak_allocated_bytes(loss_step(GRPOTrainer.compute_loss))
    print(f"peak bytes of the loss + backward: TRL {theirs / 2**20:.1f} MiB, effreason {ours / 2**20:.1f} MiB")
    assert ours < 0.5 * theirs
