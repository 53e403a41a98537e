"""One update: an optimizer step per mini-batch of packed micro-batches, whatever the method's loss.

The loss never materialises (N, V) logits outside the fused ops: :func:`packed_hidden_states` gives
the final hidden states at the response-predicting positions, (N, H), which the methods hand to the
fused LM-head ops with ``model.lm_head.weight``. :func:`optimizer_steps` scales each micro-batch's
loss by its weight (its share of the mini-batch's normaliser), accumulates the gradients and reduces
them across ranks only on the last micro-batch of a mini-batch (DDP ``no_sync``, FSDP2's switch), so
the step sees the gradient of the whole mini-batch's loss; a step whose loss or gradient norm is not
finite on some rank is skipped on all.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from effreason.train.packing import MicroBatch

WeightedBatch = tuple[MicroBatch, float]
"""A micro-batch and the factor its loss is scaled by before backward."""


def packed_hidden_states(model, batch: MicroBatch) -> torch.Tensor:
    """Final hidden states at the response-predicting positions, packed: (N, H)."""
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                         use_cache=False).last_hidden_state  # (B, L, H) padded, (1, T, H) packed
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.gather_index)


def lm_head_inputs(model, batch: MicroBatch, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (N, H), weight (V, H))`` for the fused LM-head ops, both in ``dtype`` (default the
    weight's): the fused ops see no autocast, so the LM head's precision is chosen here. A cast of the
    float32 master weight is differentiable, its gradient lands on the master."""
    hidden, weight = packed_hidden_states(model, batch), model.lm_head.weight
    dtype = dtype or weight.dtype
    return hidden.to(dtype), weight.to(dtype)


def optimizer_steps(
    module: torch.nn.Module,
    optimizer,
    scheduler,
    mini_batches: list[list[WeightedBatch]],
    loss_of: Callable[[torch.nn.Module, MicroBatch], tuple[torch.Tensor, dict]],
    *,
    grad_clip: float,
    all_finite: Callable[[bool], bool] = lambda finite: finite,
    device=None,
    compute_dtype: torch.dtype = torch.float32,
) -> dict:
    """One optimizer step per mini-batch: ``loss = sum_b weight_b * loss_b`` over its micro-batches.

    ``module`` is the method's loss module, possibly wrapped in DDP/FSDP2; ``loss_of(module, batch)``
    returns a micro-batch's loss and a dict of float statistics, its forward under autocast to
    ``compute_dtype`` when that is not float32 (the parameters stay float32 master weights; backward
    runs outside autocast, as torch recommends); ``all_finite`` agrees the finiteness verdict across ranks. Returns ``loss``, ``grad_norm`` and each statistic (their weighted sums)
    averaged over the steps taken (None when none was), ``optimizer_steps`` and ``skipped``.
    """
    sums: dict[str, float] = {}
    taken = skipped = 0
    parameters = [p for p in module.parameters() if p.requires_grad]
    for mini_batch in mini_batches:
        optimizer.zero_grad(set_to_none=True)
        totals, finite = {"loss": 0.0}, True
        for index, (batch, weight) in enumerate(mini_batch):
            batch = batch.to(device) if device is not None else batch
            with _gradient_sync(module, last=index == len(mini_batch) - 1):
                with autocast_to(batch.input_ids.device, compute_dtype):
                    loss, stats = loss_of(module, batch)
                (loss * weight).backward()
            finite = finite and bool(torch.isfinite(loss.detach()))
            for name, value in dict(stats, loss=loss.detach()).items():
                totals[name] = totals.get(name, 0.0) + float(value) * weight
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf))
        if all_finite(finite and math.isfinite(grad_norm)):
            optimizer.step()
            scheduler.step()
            taken += 1
            for name, value in dict(totals, grad_norm=grad_norm).items():
                sums[name] = sums.get(name, 0.0) + value
        else:
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
    averages = {name: value / taken for name, value in sums.items()} if taken else {"loss": None, "grad_norm": None}
    return {**averages, "optimizer_steps": taken, "skipped": skipped}


def autocast_to(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device``'s type, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _gradient_sync(module, *, last: bool):
    """Gradient reduction only on the last micro-batch: FSDP2's switch, or DDP's ``no_sync()``."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()
