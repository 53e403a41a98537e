"""``--method rl`` (the default): the paper's length-penalised RL, and the other rewards of the registry.

Per step: advantages of ``--advantage`` over each prompt's group of the rollout's rewards (``--reward``,
scored by the loop before its group filter; :mod:`effreason.train.scoring`), optionally scaled by
truncated importance weights, then the PPO clipped surrogate (``--clip-eps-low/high``, ``--loss-agg``,
KL to the starting model with ``--kl-coef``) from the fused LM-head ops, one optimizer step per
mini-batch. For the paper's reward with RLOO over whole sampled groups, a micro-batch of whole groups
computes reward and advantage inside the fused op (``fused_policy_loss``); other micro-batches use the
precomputed advantages (the same numbers). pi_old of the ratio is the sampler's log-probs, or with
``--old-logprobs trainer`` (auto when the compute dtype is not float32: the sampler's bf16 copy and the
trainer's autocast disagree) the trainer's own: ratio 1 for a step of one mini-batch, else one no-grad
forward over the rollout before the first optimizer step.
"""

from __future__ import annotations

import dataclasses

import torch

from effreason.advantages import ADVANTAGE_ESTIMATORS
from effreason.ops import fused_logprobs, fused_policy_loss, fused_ppo_loss
from effreason.train.group_filters import GROUP_FILTERS
from effreason.train.packing import MicroBatch, build_micro_batch, plan_micro_batches
from effreason.train.rollout import Rollout
from effreason.train.scoring import rewards_and_advantages, truncated_importance_weights, uses_fused_reward
from effreason.train.step import WeightedBatch, autocast_to, lm_head_inputs, optimizer_steps

LOGGED_STATS = ("clip_fraction", "kl_mean", "entropy_mean")


class PolicyLoss(torch.nn.Module):
    """Wraps the causal LM so one ``forward`` computes a micro-batch's loss (DDP/FSDP see every parameter).

    ``paper_objective``: the paper's reward + RLOO inside the fused op (``fused_policy_loss``) for
    micro-batches of whole groups; otherwise the precomputed advantages (the same numbers for the
    paper's reward) go through ``fused_ppo_loss``. ``on_policy``: the ratio's denominator is the
    current policy itself (``ratio = exp(logp - logp.detach()) = 1``, its gradient that of ``logp``),
    not ``batch.old_logprobs``.
    """

    def __init__(self, model, *, group_size: int, paper_objective: bool, loss_options: dict, temperature: float,
                 lm_head_dtype: torch.dtype | None = None, on_policy: bool = False):
        super().__init__()
        self.model = model
        self.lm_head_dtype = lm_head_dtype
        self.group_size = group_size
        self.paper_objective = paper_objective
        self.loss_options = loss_options
        self.temperature = temperature
        self.on_policy = on_policy

    def forward(self, batch: MicroBatch, alpha: float | None = None, ref_logprobs: torch.Tensor | None = None, *,
                logprobs_only: bool = False):
        """The micro-batch's ``(loss, statistics)`` at length-penalty ``alpha``; with ``logprobs_only`` its
        per-token log-probs (N,) without gradient instead (through ``forward``, so DDP and FSDP2 see the call)."""
        if logprobs_only:
            return response_logprobs(self.model, batch, self.temperature, self.lm_head_dtype)
        if alpha is None:
            raise ValueError("alpha: the policy loss needs the length-penalty weight")
        hidden, weight = lm_head_inputs(self.model, batch, self.lm_head_dtype)  # (N, H), (V, H)
        old_logprobs = None if self.on_policy else batch.old_logprobs
        options = dict(self.loss_options, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, temperature=self.temperature)
        if self.paper_objective and batch.whole_groups:
            return fused_policy_loss(hidden, weight, batch.targets, batch.cu_seqlens, batch.correct,
                                     group_size=self.group_size, alpha=alpha, **options)
        return fused_ppo_loss(hidden, weight, batch.targets, batch.cu_seqlens, batch.advantages, **options)


@torch.no_grad()
def response_logprobs(model, batch: MicroBatch, temperature: float, lm_head_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-token float32 log-probs (N,) of ``model`` on the batch's response tokens, without gradient (the frozen
    reference's, or the policy's pi_old)."""
    hidden, weight = lm_head_inputs(model, batch, lm_head_dtype)
    return fused_logprobs(hidden, weight, batch.targets, temperature).float()


def micro_batch_share(batch: MicroBatch, mini_batch: list[MicroBatch], loss_agg: str) -> float:
    """The micro-batch's weight in the mini-batch loss: its tokens for token-mean, else its sequences."""
    if loss_agg == "token-mean":
        return batch.num_tokens / max(sum(b.num_tokens for b in mini_batch), 1)
    return batch.num_sequences / sum(b.num_sequences for b in mini_batch)


class ReinforcementLearning:
    """The RL method of the training loop (module docstring)."""

    name = "rl"

    def __init__(self, trainer):
        config = trainer.config
        self.trainer = trainer
        self.fused_reward = uses_fused_reward(config) and GROUP_FILTERS[config.group_filter].whole_groups
        paper_objective = self.fused_reward and config.tis_cap == 0
        loss_options = dict(
            kl_coef=config.kl_coef, kl_estimator=config.kl_estimator, kl_in_reward=config.kl_in_reward,
            clip_eps=config.clip_eps, loss_agg=config.loss_agg,
            norm_length=float(config.max_new_tokens) if config.loss_agg == "seq-mean-token-sum-norm" else None,
        )
        old_from_trainer = config.old_logprobs == "trainer" or (config.old_logprobs == "auto" and trainer.compute_dtype != torch.float32)
        needs_old_values = config.mini_batches > 1 or config.tis_cap > 0 or (config.kl_coef > 0 and config.kl_in_reward)
        self.recomputes_old_logprobs = old_from_trainer and needs_old_values
        self.module = PolicyLoss(trainer.model, group_size=config.group_size, paper_objective=paper_objective,
                                 loss_options=loss_options, temperature=config.temperature, lm_head_dtype=trainer.lm_head_dtype,
                                 on_policy=old_from_trainer and not needs_old_values)
        self.reference = trainer.load_reference() if self.keeps_reference(config) else None

    @staticmethod
    def keeps_reference(config) -> bool:
        """A frozen reference copy exists only for the KL term (``--kl-coef > 0``)."""
        return config.kl_coef > 0

    def update(self, rollout: Rollout, alpha: float) -> dict:
        """Advantages, then one PPO step per mini-batch; the metrics of the update."""
        trainer, config = self.trainer, self.trainer.config
        if self.recomputes_old_logprobs:
            rollout = dataclasses.replace(rollout, trainer_logprobs=self._trainer_logprobs(rollout))
        if self.fused_reward:
            rewards, advantages = rewards_and_advantages(rollout.correct, rollout.lengths, config, alpha)
        else:
            rewards = rollout.rewards
            advantages = ADVANTAGE_ESTIMATORS[config.advantage](rewards, rollout.group_size)
        if config.tis_cap:
            advantages = advantages * truncated_importance_weights(rollout.trainer_logprobs, rollout.sampler_logprobs, config.tis_cap)

        def loss_of(module, batch: MicroBatch):
            ref = None if self.reference is None else response_logprobs(self.reference, batch, config.temperature, trainer.lm_head_dtype)
            loss, stats = module(batch, alpha, ref)
            return loss, {name: stats.get(name, 0.0) for name in LOGGED_STATS}

        result = optimizer_steps(trainer.trainable, trainer.optimizer, trainer.scheduler,
                                 self._mini_batches(rollout, advantages), loss_of, grad_clip=config.grad_clip,
                                 all_finite=trainer.context.all_finite, device=trainer.device,
                                 compute_dtype=trainer.compute_dtype)
        return {"reward_mean": float(rewards.mean()), **result}

    @torch.no_grad()
    def _trainer_logprobs(self, rollout: Rollout) -> list[list[float]]:
        """pi_old from the trainer (``--old-logprobs trainer``): the policy's per-token log-probs of the
        rollout before the step, in the compute dtype, over the update's micro-batches without gradient."""
        trainer = self.trainer
        values = []
        for mini_batch in self._mini_batches(rollout, torch.zeros(len(rollout.responses))):
            for batch, _ in mini_batch:
                batch = batch.to(trainer.device)
                with autocast_to(batch.input_ids.device, trainer.compute_dtype):
                    values.append(trainer.trainable(batch, logprobs_only=True).cpu())
        per_token = torch.cat(values).split([len(response) for response in rollout.responses])
        return [row.tolist() for row in per_token]

    def _mini_batches(self, rollout: Rollout, advantages: torch.Tensor) -> list[list[WeightedBatch]]:
        """The rollout split into ``mini_batches`` parts of whole groups, each packed into weighted micro-batches."""
        config, pad = self.trainer.config, self.trainer.pad_token_id
        num_rows, group_size = len(rollout.responses), rollout.group_size
        groups = num_rows // group_size
        if groups % config.mini_batches:
            raise ValueError(f"mini_batches: each rank's {groups} prompts must divide into {config.mini_batches} mini-batches")
        rows_per_mini = num_rows // config.mini_batches
        row_lengths = [len(p) + len(r) - 1 for p, r in zip(rollout.prompts, rollout.responses)]
        mini_batches = []
        for start in range(0, num_rows, rows_per_mini):
            plans = plan_micro_batches(row_lengths[start:start + rows_per_mini], group_size, config.micro_batch_tokens)
            batches = [
                build_micro_batch(rollout.prompts, rollout.responses, rollout.trainer_logprobs, rollout.correct, advantages,
                                  slice(start + plan.start, start + plan.stop), pad, group_size,
                                  packed=self.trainer.packed_forward)
                for plan in plans
            ]
            mini_batches.append([(batch, micro_batch_share(batch, batches, config.loss_agg)) for batch in batches])
        return mini_batches
