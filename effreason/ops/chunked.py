"""The ``torch`` backend of the fused ops: pure torch, chunked over tokens, the CPU path.

Only a (C, V) logits chunk ever exists (C = ``chunk_tokens``, a few hundred tokens, so extra
memory is bounded by C * V, not N * V). Per chunk, with ``x = hidden / T`` and ``z = x @ W.T``:

* one in-place ``log_softmax`` gives the target log-probs (``fused_logprobs`` also keeps ``lse``),
* one in-place ``exp_`` turns it into the probabilities ``p``, and C writes into ``D = p - onehot``,
* the gradient of ``sum_t c_t * logp_t`` never scales the chunk by ``c``: with ``Q = D @ W`` (C, H),
  ``dx = -c * Q`` and ``dW += D.T @ (-c * x)``, and the entropy comes free as
  ``H_t = -logp_t - x_t . Q_t`` (since ``sum_v p_v z_v = x . (p @ W) = z_target + x . Q``).

So the PPO loss costs three matmuls (logits, Q, dW) and two passes over the chunk.
Computation is in ``promote(dtype, float32)``; low-precision weights are upcast once per call.
"""

from __future__ import annotations

from typing import Callable

import torch

SCRATCH_ELEMENTS = 1 << 23
"""Logits-chunk budget in elements (32 MiB in float32; 262 tokens at V = 32,000); the chunk holds at most 1024 tokens."""


def default_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk: as many as fit ``SCRATCH_ELEMENTS`` logits, between 16 and 1024."""
    return max(16, min(1024, SCRATCH_ELEMENTS // max(vocab_size, 1)))


class TokenChunks:
    """Iterates over token chunks, yielding ``(start, x (C, H), logits (C, V))`` with ``x = hidden / T``.

    The logits live in one reused scratch buffer; callers may overwrite them in place. Matmuls run
    in ``dtype`` (default ``promote(hidden.dtype, float32)``; the kernel backends keep bf16/fp16).
    """

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        temperature: float,
        chunk_tokens: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.dtype = dtype or torch.promote_types(hidden.dtype, torch.float32)
        self.hidden = hidden
        self.weight = weight.to(self.dtype)  # (V, H)
        self.inv_temperature = 1.0 / temperature
        num_tokens, vocab_size = hidden.shape[0], weight.shape[0]
        self.chunk_tokens = chunk_tokens or default_chunk_tokens(vocab_size)
        rows = max(1, min(self.chunk_tokens, num_tokens))
        self.scratch = torch.empty(rows, vocab_size, dtype=self.dtype, device=hidden.device)  # (C, V)

    def __iter__(self):
        return self.shifted(None)

    def shifted(self, row_shift: torch.Tensor | None):
        """Like iterating, but the logits of token t are ``z_t - row_shift_t`` (row_shift (N,) or None)."""
        for start in range(0, self.hidden.shape[0], self.chunk_tokens):
            x = self.hidden[start : start + self.chunk_tokens].to(self.dtype)  # (C, H)
            if self.inv_temperature != 1.0:
                x = x * self.inv_temperature
            logits = self.scratch[: x.shape[0]]
            if row_shift is None:
                torch.mm(x, self.weight.T, out=logits)
            else:
                shift = row_shift[start : start + x.shape[0]].to(self.dtype).unsqueeze(1)  # (C, 1)
                torch.addmm(shift, x, self.weight.T, beta=-1.0, out=logits)
            yield start, x, logits


def _log_softmax_rows_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Turn logits (C, V) into log-probs in place; return the targets' log-probs (C,)."""
    torch.log_softmax(logits, 1, out=logits)
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def _log_softmax_rows_and_lse_(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_log_softmax_rows_`` plus ``lse = max_v z_v - log p_argmax`` (C,), exact even for logits of 1e4."""
    row_max, argmax = logits.max(1)
    target_logprobs = _log_softmax_rows_(logits, targets)
    return target_logprobs, row_max - logits.gather(1, argmax.unsqueeze(1)).squeeze(1)


def _add_softmax_grads_(
    probs: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    coef: torch.Tensor,
    inv_temperature: float,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    *,
    want_projection: bool = False,
) -> torch.Tensor | None:
    """Backpropagate ``sum_t coef_t * logp_t`` of one chunk, where ``dz = coef (onehot - p)``.

    probs (C, V) becomes ``D = p - onehot`` in place (C writes, no one-hot tensor); then
    ``dx = -coef * D @ W`` and ``dW += D.T @ (-coef * x)``. Writes the chunk's ``grad_hidden``
    (C, H), adds into ``grad_weight`` (V, H) (either may be None). With ``want_projection`` returns
    ``D @ W`` (C, H), from which ``sum_v p_v z_v = z_target + x . (D @ W)``.
    """
    rows = torch.arange(probs.shape[0], device=probs.device)
    probs[rows, targets] -= 1.0
    projected = probs @ weight if grad_hidden is not None or want_projection else None  # (C, H)
    if grad_hidden is not None:
        torch.mul(projected, (coef * -inv_temperature).unsqueeze(1), out=grad_hidden)
    if grad_weight is not None:
        grad_weight.addmm_(probs.T, coef.unsqueeze(1) * x, alpha=-1.0)
    return projected


def grad_buffers(hidden, weight, dtype, need_hidden: bool, need_weight: bool):
    """grad_hidden (every chunk writes its rows) and the zeroed grad_weight accumulator, or None."""
    grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
    return grad_hidden, grad_weight


def logprobs_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target log-probs, entropies (empty unless ``with_entropy``) and log-sum-exps, each (N,)."""
    chunks = TokenChunks(hidden, weight, temperature, chunk_tokens)
    num_tokens = hidden.shape[0]
    logprobs = torch.empty(num_tokens, dtype=chunks.dtype, device=hidden.device)
    lse = torch.empty_like(logprobs)
    entropy = torch.empty(num_tokens if with_entropy else 0, dtype=chunks.dtype, device=hidden.device)
    for start, _, logits in chunks:
        end = start + logits.shape[0]
        logprobs[start:end], lse[start:end] = _log_softmax_rows_and_lse_(logits, targets[start:end])
        if with_entropy:
            entropy[start:end] = -torch.exp(logits).mul_(logits).sum(1)
    return logprobs, entropy, lse


def logprobs_backward(
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
    need_hidden: bool,
    need_weight: bool,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (in the compute dtype) of ``sum_t g_t logp_t + gH_t H_t`` by recomputing each logits chunk.

    The chunk is recomputed already shifted by the saved ``lse`` (N,), so ``exp_`` gives ``p``.

    ``dz_v = g (onehot - p_v) - gH p_v (logp_v + H)``; without an entropy gradient this is the
    ``_add_softmax_grads_`` form (no dense gradient), otherwise the (C, V) gradient is formed in place.
    """
    chunks = TokenChunks(hidden, weight, temperature, chunk_tokens)
    grad_hidden, grad_weight = grad_buffers(hidden, chunks.weight, chunks.dtype, need_hidden, need_weight)
    for start, x, logprobs in chunks.shifted(lse):
        end = start + logprobs.shape[0]
        chunk_targets, coef = targets[start:end], grad_logprobs[start:end].to(chunks.dtype)
        chunk_grad_hidden = None if grad_hidden is None else grad_hidden[start:end]
        if grad_entropy is None:
            probs = logprobs.exp_()
            _add_softmax_grads_(
                probs, x, chunks.weight, chunk_targets, coef, chunks.inv_temperature, chunk_grad_hidden, grad_weight
            )
        else:
            entropy_coef = grad_entropy[start:end].to(chunks.dtype)
            grad_logits = _dense_logit_grads_(logprobs, chunk_targets, coef, entropy_coef, entropy[start:end])
            if chunk_grad_hidden is not None:
                torch.mm(grad_logits, chunks.weight, out=chunk_grad_hidden).mul_(chunks.inv_temperature)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, x)
    return grad_hidden, grad_weight


def _dense_logit_grads_(logprobs, targets, grad_logprobs, grad_entropy, entropy) -> torch.Tensor:
    """Overwrite log-probs (C, V) with ``g (onehot - p) - gH p (logp + H)`` and return them."""
    probs = torch.exp(logprobs)
    logprobs.add_(entropy.to(logprobs.dtype).unsqueeze(1)).mul_(grad_entropy.unsqueeze(1))
    logprobs.add_(grad_logprobs.unsqueeze(1)).mul_(probs).neg_()
    logprobs.scatter_add_(1, targets.view(-1, 1), grad_logprobs.view(-1, 1))
    return logprobs


def ppo_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    terms: Callable,
    temperature: float,
    need_hidden: bool,
    need_weight: bool,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The loss ``sum_t w_t loss_t`` and its gradients in one pass over the chunks.

    ``terms(logprobs (C,), start) -> (loss_sum, coef (C,), stat_sums (3,))`` is the per-token
    RL math (``ppo_terms.PPOTerms``). Returns the loss (0-d), grad_hidden (N, H), grad_weight
    (V, H) and stat sums (4,): the three of ``terms`` plus the entropy sum.
    """
    chunks = TokenChunks(hidden, weight, temperature, chunk_tokens)
    grad_hidden, grad_weight = grad_buffers(hidden, chunks.weight, chunks.dtype, need_hidden, need_weight)
    loss = torch.zeros((), dtype=chunks.dtype, device=hidden.device)
    stat_sums = torch.zeros(4, dtype=chunks.dtype, device=hidden.device)
    for start, x, logits in chunks:
        end = start + logits.shape[0]
        chunk_targets = targets[start:end]
        logprobs = _log_softmax_rows_(logits, chunk_targets)
        chunk_loss, coef, chunk_stats = terms(logprobs, start)
        chunk_grad_hidden = None if grad_hidden is None else grad_hidden[start:end]
        projected = _add_softmax_grads_(
            logits.exp_(), x, chunks.weight, chunk_targets, coef, chunks.inv_temperature, chunk_grad_hidden, grad_weight,
            want_projection=True,
        )
        entropy_sum = -logprobs.sum() - (projected * x).sum()  # H_t = -logp_t - x_t . (D @ W)_t
        loss += chunk_loss
        stat_sums[:3] += chunk_stats
        stat_sums[3] += entropy_sum
    return loss, grad_hidden, grad_weight, stat_sums
