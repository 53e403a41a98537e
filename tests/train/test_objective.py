"""The objective the loop optimises, checked against an independent reference on the same rollout.

For each objective other than the default (Kimi reward + GRPO + token-mean; the paper's reward with
the KL in the reward (k1) and truncated importance sampling; the paper's reward with alpha under
the length controller), a two-step run records every step's rollout, the weights before the update
and the gradients the update applied. The reference recomputes the rewards (``effreason.rewards``),
the advantages (``effreason.advantages``), the TIS weights (by their formula) and the loss
(``effreason.losses.policy_loss``) from a plain Hugging Face forward of each sequence with
materialised logits, then its gradients by autograd. The logged ``loss`` (one mini-batch per step,
so the loss of the whole rollout) and ``grad_norm`` and the applied gradients must match.

The run samples long enough answers that many end with EOS, and grades every finished answer
correct, so rewards and advantages vary within groups; with the real toy grading the random tiny
model is never right and every advantage would be zero. ``top_p < 1`` makes the sampler's
log-probs differ from the trainer's, so the TIS weights differ from 1.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from effreason import losses
from effreason.advantages import grpo_advantages, rloo_advantages
from effreason.rewards import kimi_length_reward, length_penalized_reward
from effreason.train import config_from_args, loop, run
from effreason.train.loop import Trainer
from effreason.train.methods import rl

from train_helpers import tiny_run_flags

OTHER_OBJECTIVES = [
    dict(reward="kimi", advantage="grpo", loss_agg="token-mean"),
    dict(kl_coef=0.01, kl_estimator="k1", kl_in_reward=True, tis_cap=2.0),
    dict(target_token_ratio=0.5, reward="paper"),
]
RUN_SETTINGS = dict(steps=2, eval_problems=0, group_size=4, prompts_per_step=4, max_new_tokens=48, top_p=0.95)

LOSS_TOLERANCE = dict(rtol=1e-5, atol=1e-7)
"""float32. On-policy, the loss of centred advantages is ~0 (a sum of O(1) terms that cancel), hence the absolute part."""
GRADIENT_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
"""float32, two forward paths (packed hidden states + fused loss vs. one sequence at a time with logits); gradient
entries are ~1e-3, the errors seen ~5e-8, a wrong estimator, KL sign, alpha or TIS weight moves them by ~1e-2 relative."""


class StepRecorder:
    """Per rollout step: the completions, the scored rollout, the weights before and the gradients after the update."""

    def __init__(self, monkeypatch):
        self.steps = []
        graded, optimizer_steps = Trainer._graded, rl.optimizer_steps

        def recording_graded(trainer, problems, prompts, groups):
            rollout = graded(trainer, problems, prompts, groups)
            self.steps.append(dict(completions=[c for group in groups for c in group], rollout=rollout))
            return rollout

        def recording_optimizer_steps(module, optimizer, scheduler, mini_batches, loss_of, **options):
            model = getattr(module, "module", module).model
            self.steps[-1]["weights"] = {name: value.detach().clone() for name, value in model.state_dict().items()}
            result = optimizer_steps(module, optimizer, scheduler, mini_batches, loss_of, **options)
            self.steps[-1]["gradients"] = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
            return result

        monkeypatch.setattr(Trainer, "_graded", recording_graded)
        monkeypatch.setattr(rl, "optimizer_steps", recording_optimizer_steps)


def _every_finished_answer_is_correct(monkeypatch):
    build_task = loop.build_task

    def build(config):
        task = build_task(config)
        task.is_correct = lambda text, problem: True
        return task

    monkeypatch.setattr(loop, "build_task", build)


def _response_logprobs(model, prompts, responses, temperature: float) -> torch.Tensor:
    """(N,) log-probs of the response tokens, sequence after sequence: one unpadded forward per sequence."""
    per_sequence = []
    for prompt, response in zip(prompts, responses):
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]  # (R, V)
        log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
        per_sequence.append(log_probs.gather(1, torch.tensor(response).view(-1, 1)).squeeze(1))
    return torch.cat(per_sequence)


def _reference_advantages(step: dict, config, alpha: float) -> torch.Tensor:
    """(S,) advantages by the formulas: reward, then the estimator, then the TIS weight."""
    rollout, group_size = step["rollout"], config.group_size
    correct = rollout.correct
    lengths = torch.tensor([len(response) for response in rollout.responses])
    if config.reward == "kimi":
        rewards = kimi_length_reward(correct, lengths, group_size, weight=config.kimi_weight)
    else:
        rewards = length_penalized_reward(correct, lengths, group_size, alpha)
    advantages = {"grpo": grpo_advantages, "rloo": rloo_advantages}[config.advantage](rewards, group_size)
    if config.tis_cap:
        log_ratio = [torch.tensor(c.trainer_logprobs).double().mean() - torch.tensor(c.logprobs).double().mean()
                     for c in step["completions"]]
        advantages = advantages * torch.stack(log_ratio).exp().clamp_max(config.tis_cap).float()
    return advantages


def _reference_loss_and_gradients(step: dict, config, alpha: float, tiny_model_dir):
    """The step's loss, gradient norm and the gradients the update applies (clipped to ``grad_clip``)."""
    rollout = step["rollout"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model.load_state_dict(step["weights"])
    logprobs = _response_logprobs(model, rollout.prompts, rollout.responses, config.temperature)
    ref_logprobs = None
    if config.kl_coef > 0:  # the frozen reference is the starting model
        reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            ref_logprobs = _response_logprobs(reference, rollout.prompts, rollout.responses, config.temperature)
    lengths = torch.tensor([len(response) for response in rollout.responses])
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0))
    loss, _ = losses.policy_loss(
        logprobs, _reference_advantages(step, config, alpha), cu_seqlens,
        old_logprobs=torch.tensor([x for row in rollout.trainer_logprobs for x in row]),
        ref_logprobs=ref_logprobs, kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator, kl_in_reward=config.kl_in_reward, clip_eps=config.clip_eps, loss_agg=config.loss_agg,
    )
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients.values()]))
    clip = min(1.0, config.grad_clip / (float(norm) + 1e-6))
    return loss.detach(), norm, {name: g * clip for name, g in gradients.items()}


@pytest.mark.parametrize("overrides", OTHER_OBJECTIVES)
def test_other_objectives_log_the_reference_loss(tiny_model_dir, toy_data_file, tmp_path, monkeypatch, overrides):
    recorder = StepRecorder(monkeypatch)
    _every_finished_answer_is_correct(monkeypatch)
    out = tmp_path / "run"
    config = config_from_args(tiny_run_flags(tiny_model_dir, toy_data_file, out, **RUN_SETTINGS, **overrides))
    run(config)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["skipped"] == 0 for m in metrics)
    for step, logged in zip(recorder.steps, metrics):
        correct = step["rollout"].correct.view(-1, config.group_size)
        assert (correct.any(dim=1) & ~correct.all(dim=1)).any(), "a rollout without mixed groups checks little"
        loss, grad_norm, gradients = _reference_loss_and_gradients(step, config, logged["alpha"], tiny_model_dir)
        torch.testing.assert_close(torch.tensor(logged["loss"]), loss.float(), **LOSS_TOLERANCE)
        torch.testing.assert_close(torch.tensor(logged["grad_norm"]), grad_norm.float(), **GRADIENT_TOLERANCE)
        assert gradients.keys() == step["gradients"].keys()
        for name, gradient in gradients.items():
            torch.testing.assert_close(step["gradients"][name], gradient, **GRADIENT_TOLERANCE, msg=lambda m: f"{name}: {m}")
