"""One update on a rollout: packed micro-batches, the fused loss on the final hidden states, AdamW.

The loss never materialises (N, V) logits outside the op: the model body gives hidden states
(``model.model(...)``), the response positions are gathered into (N, H), and the loss op
takes them with the LM head weight (``model.lm_head.weight``). Gradients accumulate over the
micro-batches of a mini-batch, each micro-batch loss scaled by its share of the mini-batch
(sequences, or tokens for ``token-mean``), so the sum equals the loss of the whole mini-batch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from effreason.ops import fused_logprobs, fused_policy_loss, fused_ppo_loss
from effreason.train.packing import MicroBatch


class PolicyLoss(torch.nn.Module):
    """Wraps the causal LM so one ``forward`` computes a micro-batch's loss (DDP/FSDP see every parameter).

    ``paper_objective``: the paper's reward + RLOO inside the fused op (``fused_policy_loss``) for
    micro-batches of whole groups; otherwise the precomputed advantages (the same numbers for the
    paper's reward) go through ``fused_ppo_loss``.
    """

    def __init__(self, model, *, group_size: int, paper_objective: bool, loss_options: dict, temperature: float):
        super().__init__()
        self.model = model
        self.group_size = group_size
        self.paper_objective = paper_objective
        self.loss_options = loss_options
        self.temperature = temperature

    def forward(self, batch: MicroBatch, alpha: float, ref_logprobs: torch.Tensor | None = None):
        hidden = packed_hidden_states(self.model, batch)  # (N, H)
        weight = self.model.lm_head.weight  # (V, H)
        options = dict(self.loss_options, old_logprobs=batch.old_logprobs, ref_logprobs=ref_logprobs, temperature=self.temperature)
        if self.paper_objective and batch.whole_groups:
            return fused_policy_loss(hidden, weight, batch.targets, batch.cu_seqlens, batch.correct,
                                     group_size=self.group_size, alpha=alpha, **options)
        return fused_ppo_loss(hidden, weight, batch.targets, batch.cu_seqlens, batch.advantages, **options)


def packed_hidden_states(model, batch: MicroBatch) -> torch.Tensor:
    """Final hidden states at the response-predicting positions, packed: (N, H)."""
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state  # (B, L, H)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.gather_index)


@torch.no_grad()
def reference_logprobs(ref_model, batch: MicroBatch, temperature: float) -> torch.Tensor:
    """Per-token log-probs (N,) of the frozen reference model on the batch's response tokens."""
    hidden = packed_hidden_states(ref_model, batch)
    return fused_logprobs(hidden, ref_model.lm_head.weight, batch.targets, temperature).float()


@dataclass
class UpdateResult:
    """Averages over the mini-batches of one rollout step."""

    loss: float = 0.0
    grad_norm: float = 0.0
    clip_fraction: float = 0.0
    kl_mean: float = 0.0
    entropy_mean: float = 0.0
    optimizer_steps: int = 0
    skipped: int = 0
    sums: dict = field(default_factory=dict, repr=False)


def micro_batch_share(batch: MicroBatch, mini_batch: list[MicroBatch], loss_agg: str) -> float:
    """The micro-batch's weight in the mini-batch loss: its tokens for token-mean, else its sequences."""
    if loss_agg == "token-mean":
        return batch.num_tokens / max(sum(b.num_tokens for b in mini_batch), 1)
    return batch.num_sequences / sum(b.num_sequences for b in mini_batch)


def train_on_rollout(
    policy,
    optimizer,
    scheduler,
    mini_batches: list[list[MicroBatch]],
    *,
    alpha: float,
    loss_agg: str,
    grad_clip: float,
    ref_model=None,
    temperature: float = 1.0,
    all_finite=lambda finite: finite,
    device=None,
) -> UpdateResult:
    """One optimizer step per mini-batch; a step whose loss or gradient norm is not finite is skipped.

    ``policy`` is a :class:`PolicyLoss`, possibly wrapped in DDP/FSDP (``no_sync`` on all but the
    last micro-batch); ``all_finite`` agrees the finiteness verdict across ranks.
    """
    result = UpdateResult()
    parameters = [p for p in policy.parameters() if p.requires_grad]
    for mini_batch in mini_batches:
        optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "clip_fraction": 0.0, "kl_mean": 0.0, "entropy_mean": 0.0}
        finite = True
        for index, batch in enumerate(mini_batch):
            batch = batch.to(device) if device is not None else batch
            share = micro_batch_share(batch, mini_batch, loss_agg)
            ref = reference_logprobs(ref_model, batch, temperature) if ref_model is not None else None
            with _gradient_sync(policy, last=index == len(mini_batch) - 1):
                loss, stats = policy(batch, alpha, ref)
                (loss * share).backward()
            finite = finite and bool(torch.isfinite(loss.detach()))
            totals["loss"] += float(loss.detach()) * share
            for name in ("clip_fraction", "kl_mean", "entropy_mean"):
                totals[name] += float(stats.get(name, torch.zeros(()))) * share
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf))
        if all_finite(finite and math.isfinite(grad_norm)):
            optimizer.step()
            scheduler.step()
            result.optimizer_steps += 1
            _accumulate(result, totals, grad_norm)
        else:
            optimizer.zero_grad(set_to_none=True)
            result.skipped += 1
    return _averaged(result)


def _gradient_sync(policy, *, last: bool):
    """Gradient reduction only on the last micro-batch: FSDP2's switch, or DDP's ``no_sync()``."""
    if hasattr(policy, "set_requires_gradient_sync"):
        policy.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not hasattr(policy, "no_sync"):
        return contextlib.nullcontext()
    return policy.no_sync()


def _accumulate(result: UpdateResult, totals: dict, grad_norm: float) -> None:
    for name, value in dict(totals, grad_norm=grad_norm).items():
        result.sums[name] = result.sums.get(name, 0.0) + value


def _averaged(result: UpdateResult) -> UpdateResult:
    count = max(result.optimizer_steps, 1)
    for name, value in result.sums.items():
        setattr(result, name, value / count)
    result.loss = result.loss if result.optimizer_steps else math.nan
    return result
