"""The ``triton`` and ``cuda`` backends of the fused ops: the chunk loop around row kernels.

Per chunk of C tokens, with ``x = hidden / T`` in the input dtype: one matmul gives the logits
z = x @ W.T (C, V) (bf16 logits for bf16 inputs, as Liger's fused losses); a row kernel computes
``logp_target``, ``lse`` and the entropy in float32 (online over vocabulary tiles); the per-token RL
math gives ``coef_t`` (``ppo_terms``); a second row kernel overwrites z in place with
``dz = coef (onehot - p)``; then ``dx = dz @ W / T`` and ``dW += dz.T @ x`` (float32 accumulator).
The PPO loss so costs three matmuls and the chunk is the only scratch (C * V elements).

Row kernels: ``kernels/fused_logprobs.py`` (Triton) or ``torch.ops.effreason.fused_logprobs_row_*``
(``csrc/fused_logprobs/``, CUDA). Both take the same arguments.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from effreason.ops.chunked import TokenChunks, grad_buffers

GPU_SCRATCH_BYTES = 1 << 29
"""Logits-chunk budget on GPUs (512 MiB): about 1700 tokens at V = 151936 in bf16."""


def _chunk_tokens(hidden: torch.Tensor, vocab_size: int) -> int:
    if hidden.device.type != "cuda":
        return 256
    return max(64, GPU_SCRATCH_BYTES // (vocab_size * hidden.element_size()) // 64 * 64)


def _row_kernels(backend: str):
    if backend == "triton":
        from effreason.kernels import fused_logprobs as triton_rows

        return triton_rows.row_stats, triton_rows.row_grad_
    return torch.ops.effreason.fused_logprobs_row_stats, torch.ops.effreason.fused_logprobs_row_grad_


@functools.lru_cache(maxsize=None)
def _addmm_accumulates_in_float32(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``addmm(out_dtype=float32)`` adds low-precision products straight into a float32 tensor here."""
    try:
        accumulator = torch.ones(2, 2, device=device)
        left, right = torch.ones(2, 3, device=device, dtype=dtype), torch.ones(3, 2, device=device, dtype=dtype)
        torch.addmm(accumulator, left, right, out_dtype=torch.float32, out=accumulator)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool((accumulator == 4.0).all())


def _accumulate_weight_grad_(grad_weight: torch.Tensor, grad_logits: torch.Tensor, x: torch.Tensor) -> None:
    """``grad_weight += grad_logits.T @ x`` into the float32 accumulator, without a (V, H) temporary where possible."""
    if grad_weight.dtype == grad_logits.dtype:
        grad_weight.addmm_(grad_logits.T, x)
    elif _addmm_accumulates_in_float32(grad_logits.device, grad_logits.dtype):
        torch.addmm(grad_weight, grad_logits.T, x, out_dtype=torch.float32, out=grad_weight)
    else:
        grad_weight.add_(grad_logits.T @ x)


def _apply_logit_grads(grad_logits, x, weight, inv_temperature, grad_hidden, grad_weight) -> None:
    """``grad_hidden = dz @ W / T`` (C, H) and ``grad_weight += dz.T @ x`` (V, H) for one chunk."""
    if grad_hidden is not None:
        if grad_hidden.dtype == grad_logits.dtype:
            torch.mm(grad_logits, weight, out=grad_hidden)
        else:
            grad_hidden.copy_(grad_logits @ weight)
        if inv_temperature != 1.0:
            grad_hidden.mul_(inv_temperature)
    if grad_weight is not None:
        _accumulate_weight_grad_(grad_weight, grad_logits, x)


class KernelBackend:
    """``logprobs_forward``, ``logprobs_backward`` and ``ppo_forward`` (as in ``chunked``) on row kernels."""

    def __init__(self, backend: str):
        self.row_stats, self.row_grad_ = _row_kernels(backend)

    def _chunks(self, hidden, weight, temperature) -> TokenChunks:
        return TokenChunks(hidden, weight, temperature, _chunk_tokens(hidden, weight.shape[0]), dtype=hidden.dtype)

    def logprobs_forward(self, hidden, weight, targets, temperature, with_entropy):
        """Target log-probs, entropies (empty unless ``with_entropy``) and log-sum-exps, each (N,)."""
        chunks = self._chunks(hidden, weight, temperature)
        dtype = _accumulator_dtype(hidden)
        logprobs, lse, entropy = (torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device) for _ in range(3))
        for start, _, logits in chunks:
            end = start + logits.shape[0]
            logprobs[start:end], lse[start:end], entropy[start:end] = self.row_stats(logits, targets[start:end])
        return logprobs, (entropy if with_entropy else entropy[:0].clone()), lse

    def logprobs_backward(
        self, grad_logprobs, grad_entropy, hidden, weight, targets, lse, entropy, temperature, need_hidden, need_weight
    ):
        """Gradients of ``sum_t g_t logp_t + gH_t H_t``, recomputing each logits chunk."""
        chunks = self._chunks(hidden, weight, temperature)
        grad_hidden, grad_weight = grad_buffers(hidden, weight, _accumulator_dtype(hidden), need_hidden, need_weight)
        for start, x, logits in chunks:
            end = start + logits.shape[0]
            entropy_args = () if grad_entropy is None else (_f32(grad_entropy[start:end]), _f32(entropy[start:end]))
            self.row_grad_(logits, targets[start:end], _f32(lse[start:end]), _f32(grad_logprobs[start:end]), *entropy_args)
            chunk_grad_hidden = None if grad_hidden is None else grad_hidden[start:end]
            _apply_logit_grads(logits, x, chunks.weight, chunks.inv_temperature, chunk_grad_hidden, grad_weight)
        return grad_hidden, grad_weight

    def ppo_forward(self, hidden, weight, targets, terms: Callable, temperature, need_hidden, need_weight):
        """Loss, gradients and stat sums (4,) in one pass, as ``chunked.ppo_forward``."""
        chunks = self._chunks(hidden, weight, temperature)
        dtype = _accumulator_dtype(hidden)
        grad_hidden, grad_weight = grad_buffers(hidden, weight, dtype, need_hidden, need_weight)
        loss = torch.zeros((), dtype=dtype, device=hidden.device)
        stat_sums = torch.zeros(4, dtype=dtype, device=hidden.device)
        for start, x, logits in chunks:
            end = start + logits.shape[0]
            chunk_targets = targets[start:end]
            logprobs, lse, entropy = self.row_stats(logits, chunk_targets)
            chunk_loss, coef, chunk_stats = terms(logprobs.to(dtype), start)
            self.row_grad_(logits, chunk_targets, lse, _f32(coef))
            chunk_grad_hidden = None if grad_hidden is None else grad_hidden[start:end]
            _apply_logit_grads(logits, x, chunks.weight, chunks.inv_temperature, chunk_grad_hidden, grad_weight)
            loss += chunk_loss
            stat_sums[:3] += chunk_stats
            stat_sums[3] += entropy.sum()
        return loss, grad_hidden, grad_weight, stat_sums


def _accumulator_dtype(hidden: torch.Tensor) -> torch.dtype:
    """Gradients and per-token outputs are float32 (float64 for float64 inputs)."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _f32(vector: torch.Tensor) -> torch.Tensor:
    return vector.to(torch.float32).contiguous()
