"""Fused LM-head ops: per-token log-probs and the whole PPO / paper loss without the (N, V) logits.

Public ops (all differentiable with respect to ``hidden`` and ``weight``):

* ``fused_logprobs``: ``log_softmax(hidden @ weight.T / T)[target]`` (and entropy); saves only the
  per-token log-sum-exp and recomputes logits chunks in backward, so any upstream gradient works.
* ``fused_ppo_loss``: ``effreason.ops.reference.ppo_loss`` (PPO clip, KL, aggregation modes); the
  gradients are formed chunk by chunk during forward (three matmuls) and only scaled in backward.
* ``fused_policy_loss``: the paper's objective, ``reference.policy_loss``: length-penalised reward and
  RLOO advantages (``length_penalized_rloo``) then ``fused_ppo_loss``.

Backends: ``"torch"`` (``chunked``: pure torch, any device), ``"triton"`` and ``"cuda"``
(``chunked_kernels``: row kernels from ``kernels/fused_logprobs.py`` or ``csrc/fused_logprobs/``),
``"auto"`` = cuda, then triton on GPUs, torch on the CPU. The work is done by the custom ops
``effreason::fused_logprobs``, ``effreason::fused_logprobs_backward`` and ``effreason::fused_ppo_loss``
(``torch.library``, with fake kernels and autograd, so ``torch.compile`` graphs through them).
"""

from __future__ import annotations

from typing import Optional

import torch

from effreason import losses
from effreason._backends import native_cuda_usable, triton_usable_on
from effreason._validation import check_bool, check_correct_per_sequence, check_cu_seqlens, check_vector
from effreason.ops import chunked, ppo_terms
from effreason.ops.segment import length_penalized_rloo

BACKENDS = ("auto", "torch", "triton", "cuda")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# ----------------------------------------------------------------------------- backends


def cuda_kernels_available(device: torch.device | None = None) -> bool:
    """Whether ``effreason._C`` has the fused-logprobs CUDA row kernels and they launch on ``device``
    (default: the current CUDA device)."""
    return native_cuda_usable(device) and hasattr(torch.ops.effreason, "fused_logprobs_row_stats")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``device``: ``auto`` is cuda, else triton on GPUs, torch elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = device.type == "cuda"
    if backend == "auto":
        if on_gpu and cuda_kernels_available(device):
            return "cuda"
        return "triton" if on_gpu and triton_usable_on(device) else "torch"
    if backend == "triton" and not triton_usable_on(device):
        raise ValueError(f"backend='triton' needs a CUDA device or TRITON_INTERPRET=1 on the CPU, got {device}")
    if backend == "cuda" and not (on_gpu and cuda_kernels_available(device)):
        raise ValueError(f"backend='cuda' needs CUDA tensors and effreason._C built with CUDA, got {device}")
    return backend


def _implementation(backend: str):
    """The module or object with ``logprobs_forward``, ``logprobs_backward`` and ``ppo_forward``."""
    if backend == "torch":
        return chunked
    from effreason.ops import chunked_kernels

    return chunked_kernels.KernelBackend(backend)


# ----------------------------------------------------------------------------- validation


def _check_float_matrix(name: str, tensor) -> torch.Tensor:
    """Require a 2-D floating tensor of the supported dtypes."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got {getattr(tensor, 'shape', type(tensor).__name__)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16, float16 or float64, got {tensor.dtype}")
    return tensor


def _check_lm_head(hidden, weight, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate hidden (N, H), weight (V, H), targets (N,) in [0, V); return them contiguous, targets int64."""
    _check_float_matrix("hidden", hidden)
    _check_float_matrix("weight", weight)
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have the dtype of hidden ({hidden.dtype}), got {weight.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight must be on {hidden.device}, got {weight.device}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be (V, {hidden.shape[1]}) to match hidden, got {tuple(weight.shape)}")
    check_vector("targets", targets, length=hidden.shape[0])
    if targets.dtype not in (torch.int64, torch.int32) or targets.device != hidden.device:
        raise ValueError(f"targets must be int64 on {hidden.device}, got {targets.dtype} on {targets.device}")
    if targets.numel():
        low, high = torch.aminmax(targets)
        if int(low) < 0 or int(high) >= weight.shape[0]:
            raise ValueError(f"targets must be token ids in [0, {weight.shape[0]}), got {int(low)} .. {int(high)}")
    return hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous()


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _token_vector(name: str, tensor: torch.Tensor | None, num_tokens: int, device: torch.device):
    if tensor is None:
        return None
    check_vector(name, tensor, length=num_tokens)
    if tensor.device != device:
        raise ValueError(f"{name} must be on {device}, got {tensor.device}")
    return tensor.contiguous()


# ----------------------------------------------------------------------------- fused_logprobs op


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@torch.library.custom_op("effreason::fused_logprobs", mutates_args=())
def _logprobs_op(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs (N,), entropy (N,) or (0,), lse (N,)), all in ``promote(dtype, float32)``."""
    impl = _implementation(backend)
    return impl.logprobs_forward(hidden, weight, targets, temperature, with_entropy)


@_logprobs_op.register_fake
def _(hidden, weight, targets, temperature, with_entropy, backend):
    num_tokens, dtype = hidden.shape[0], _compute_dtype(hidden.dtype)
    logprobs = hidden.new_empty(num_tokens, dtype=dtype)
    entropy = hidden.new_empty(num_tokens if with_entropy else 0, dtype=dtype)
    return logprobs, entropy, hidden.new_empty(num_tokens, dtype=dtype)


@torch.library.custom_op("effreason::fused_logprobs_backward", mutates_args=())
def _logprobs_backward_op(
    grad_logprobs: torch.Tensor,
    grad_entropy: Optional[torch.Tensor],
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    backend: str,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_weight) in the inputs' dtype; a gradient not needed comes back empty."""
    impl = _implementation(backend)
    grad_hidden, grad_weight = impl.logprobs_backward(
        grad_logprobs.contiguous(),
        None if grad_entropy is None else grad_entropy.contiguous(),
        hidden, weight, targets, lse, entropy, temperature, need_hidden, need_weight,
    )
    return _grads_in_input_dtype(grad_hidden, grad_weight, hidden, weight)


@_logprobs_backward_op.register_fake
def _(grad_logprobs, grad_entropy, hidden, weight, targets, lse, entropy, temperature, backend, need_hidden, need_weight):
    return _empty_grads(hidden, weight, need_hidden, need_weight)


def _empty_grads(hidden, weight, need_hidden: bool, need_weight: bool):
    grad_hidden = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    grad_weight = torch.empty_like(weight) if need_weight else weight.new_empty(0)
    return grad_hidden, grad_weight


def _grads_in_input_dtype(grad_hidden, grad_weight, hidden, weight):
    """Cast computed gradients to the inputs' dtypes; a None gradient becomes an empty tensor."""
    grad_hidden = hidden.new_empty(0) if grad_hidden is None else grad_hidden.to(hidden.dtype)
    grad_weight = weight.new_empty(0) if grad_weight is None else grad_weight.to(weight.dtype)
    return grad_hidden, grad_weight


def _logprobs_setup_context(ctx, inputs, output):
    hidden, weight, targets, temperature, with_entropy, backend = inputs
    _, entropy, lse = output
    ctx.save_for_backward(hidden, weight, targets, lse, entropy)
    ctx.temperature, ctx.with_entropy, ctx.backend = temperature, with_entropy, backend


def _logprobs_backward(ctx, grad_logprobs, grad_entropy, _grad_lse):
    hidden, weight, targets, lse, entropy = ctx.saved_tensors
    need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_hidden, grad_weight = _logprobs_backward_op(
        grad_logprobs, grad_entropy if ctx.with_entropy else None, hidden, weight, targets, lse, entropy,
        ctx.temperature, ctx.backend, need_hidden, need_weight,
    )
    return (grad_hidden if need_hidden else None), (grad_weight if need_weight else None), None, None, None, None


_logprobs_op.register_autograd(_logprobs_backward, setup_context=_logprobs_setup_context)


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    return_entropy: bool = False,
    backend: str = "auto",
):
    """Per-token ``log p_t = log_softmax(hidden @ weight.T / T)[target_t]`` without the (N, V) logits.

    Args:
        hidden: (N, H) float32, bfloat16 or float16 (float64 for tests): the last hidden states of
            the N positions whose next token is scored.
        weight: (V, H), ``hidden``'s dtype and device: the LM head (``model.lm_head.weight``).
        targets: (N,) int64 or int32 token ids in [0, V), on ``hidden``'s device.
        temperature: float > 0; the logits are divided by it (the sampling temperature).
        return_entropy: also return the entropy ``H_t = -sum_v p_tv log p_tv``.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"`` (see ``resolve_backend``).

    Returns:
        (N,) float32 log-probs (float64 for float64 inputs) and, with ``return_entropy``, the (N,)
        entropy. Both are differentiable with respect to hidden and weight for any upstream
        gradient: backward recomputes the logits chunk by chunk,
        ``dz_tv = g_t (onehot_tv - p_tv) - gH_t p_tv (log p_tv + H_t)``.
        Oracle: ``effreason.ops.reference.token_logprobs(_and_entropy)``.
    """
    hidden, weight, targets = _check_lm_head(hidden, weight, targets)
    temperature = _check_temperature(temperature)
    backend = resolve_backend(backend, hidden.device)
    logprobs, entropy, _ = _logprobs_op(hidden, weight, targets, temperature, bool(return_entropy), backend)
    return (logprobs, entropy) if return_entropy else logprobs


# ----------------------------------------------------------------------------- fused_ppo_loss op


@torch.library.custom_op("effreason::fused_ppo_loss", mutates_args=())
def _ppo_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_advantages: torch.Tensor,
    token_weights: torch.Tensor,
    old_logprobs: Optional[torch.Tensor],
    ref_logprobs: Optional[torch.Tensor],
    kl_coef: float,
    kl_estimator: str,
    kl_in_loss: bool,
    clip_low: float,
    clip_high: float,
    temperature: float,
    backend: str,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss (), grad_hidden (N, H), grad_weight (V, H), stat sums (4,)): gradients formed in forward."""
    terms = ppo_terms.PPOTerms(
        token_advantages, token_weights, old_logprobs, ref_logprobs, kl_coef, kl_estimator, kl_in_loss, clip_low, clip_high
    )
    impl = _implementation(backend)
    loss, grad_hidden, grad_weight, stat_sums = impl.ppo_forward(
        hidden, weight, targets, terms, temperature, need_hidden, need_weight
    )
    grad_hidden, grad_weight = _grads_in_input_dtype(grad_hidden, grad_weight, hidden, weight)
    return loss, grad_hidden, grad_weight, stat_sums


@_ppo_op.register_fake
def _(hidden, weight, targets, token_advantages, token_weights, old_logprobs, ref_logprobs, kl_coef, kl_estimator,
      kl_in_loss, clip_low, clip_high, temperature, backend, need_hidden, need_weight):
    dtype = _compute_dtype(hidden.dtype)
    grad_hidden, grad_weight = _empty_grads(hidden, weight, need_hidden, need_weight)
    return hidden.new_empty((), dtype=dtype), grad_hidden, grad_weight, hidden.new_empty(4, dtype=dtype)


def _ppo_setup_context(ctx, inputs, output):
    _, grad_hidden, grad_weight, _ = output
    ctx.save_for_backward(grad_hidden, grad_weight)


def _scale(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad * grad_loss``. In eager mode with the usual ``grad_loss == 1`` (``loss.backward()``)
    the saved tensor itself is returned: it is released right after this backward and autograd
    takes it as ``.grad``, so no second (V, H) tensor is allocated (one host sync to read the
    scalar). Traced graphs (torch.compile, AOT; tensor subclasses) always multiply."""
    if type(grad) is torch.Tensor and not torch.compiler.is_compiling() and grad_loss.item() == 1.0:
        return grad
    return grad * grad_loss.to(grad.dtype)


def _ppo_backward(ctx, grad_loss, *_unused):
    grad_hidden, grad_weight = ctx.saved_tensors
    scale_hidden = _scale(grad_hidden, grad_loss) if ctx.needs_input_grad[0] else None
    scale_weight = _scale(grad_weight, grad_loss) if ctx.needs_input_grad[1] else None
    return (scale_hidden, scale_weight) + (None,) * 14


_ppo_op.register_autograd(_ppo_backward, setup_context=_ppo_setup_context)


def fused_ppo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    kl_in_reward: bool = False,
    clip_eps: tuple[float, float] = (0.2, 0.2),
    loss_agg: str = "seq-mean-token-mean",
    token_mask: torch.Tensor | None = None,
    norm_length: float | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, dict]:
    """The packed PPO loss ``sum_t w_t loss_t`` straight from hidden states, equal to ``reference.ppo_loss``.

    ``loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high)) [+ kl_coef * kl_t]`` with
    ``r_t = exp(logp_t - old_t)`` (Schulman et al. 2017; DAPO's separate clip) and ``w_t`` the
    aggregation weights of ``effreason.losses.aggregation_weights``. Masked tokens are dropped
    before any matmul.

    Args (N response tokens of S packed sequences; sequence s owns tokens ``cu_seqlens[s]:cu_seqlens[s+1]``):
        hidden: (N, H) float32, bfloat16 or float16 (float64 for tests): the hidden state that
            predicts each response token.
        weight: (V, H), ``hidden``'s dtype and device: the LM head.
        targets: (N,) int64 or int32 token ids in [0, V): the response tokens.
        cu_seqlens: (S + 1,) int32 or int64, starting at 0, non-decreasing, ending at N.
        advantages: (S,) floating, one advantage per sequence (treated as constants).
        old_logprobs: (N,) floating sampling-time log-probs; None means on-policy (ratio 1).
        ref_logprobs: (N,) floating reference-policy log-probs; needed when ``kl_coef > 0``.
        kl_coef: float >= 0. kl_estimator: ``"k1"`` or ``"k3"``. kl_in_reward: subtract the KL
            from the per-token reward (needs ``old_logprobs``) instead of adding it to the loss.
        clip_eps: (low, high) floats with ``0 <= low < 1`` and ``high >= 0``.
        loss_agg: ``"token-mean"``, ``"seq-mean-token-mean"`` (the paper's),
            ``"seq-mean-token-sum"`` or ``"seq-mean-token-sum-norm"`` (Dr. GRPO).
        token_mask: (N,) bool; False tokens are left out of the loss.
        norm_length: float > 0, the divisor of ``seq-mean-token-sum-norm`` (default: the longest sequence).
        temperature: float > 0. backend: as for ``fused_logprobs``.

    Returns:
        ``(loss, stats)``: the 0-d loss (float32, float64 for float64 inputs), differentiable with
        respect to hidden and weight, and detached 0-d stats ``clip_fraction``, ``ratio_mean``,
        ``kl_mean``, ``entropy_mean`` over unmasked tokens.
    """
    hidden, weight, targets = _check_lm_head(hidden, weight, targets)
    old_logprobs, ref_logprobs, token_mask = _check_packed_inputs(
        hidden, cu_seqlens, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, token_mask=token_mask
    )
    clip_low, clip_high = losses.check_clip_eps(clip_eps)
    losses.check_kl_options(kl_coef, kl_estimator, kl_in_reward, old_logprobs, ref_logprobs)
    temperature = _check_temperature(temperature)
    backend = resolve_backend(backend, hidden.device)

    dtype = _compute_dtype(hidden.dtype)
    token_advantages, token_weights = ppo_terms.token_inputs(
        cu_seqlens, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
        kl_estimator=kl_estimator, kl_in_reward=kl_in_reward, loss_agg=loss_agg, token_mask=token_mask,
        norm_length=norm_length, dtype=dtype,
    )
    per_token = [hidden, targets, token_advantages, token_weights, old_logprobs, ref_logprobs]
    if token_mask is not None:
        kept = token_mask.nonzero().squeeze(1)
        per_token = [None if tensor is None else tensor.index_select(0, kept) for tensor in per_token]
    hidden, targets, token_advantages, token_weights, old_logprobs, ref_logprobs = per_token
    loss, _, _, stat_sums = _ppo_op(
        hidden, weight, targets, token_advantages, token_weights, old_logprobs,
        ref_logprobs if kl_coef > 0 else None, float(kl_coef), kl_estimator, not kl_in_reward,
        clip_low, clip_high, temperature, backend, hidden.requires_grad, weight.requires_grad,
    )
    return loss, _mean_stats(stat_sums, hidden.shape[0])


def _check_packed_inputs(hidden, cu_seqlens, advantages, *, old_logprobs, ref_logprobs, token_mask):
    """Validate the packed boundaries, advantages (S,) and per-token vectors (N,); return the vectors contiguous."""
    num_tokens, device = hidden.shape[0], hidden.device
    check_cu_seqlens(cu_seqlens, num_tokens)
    check_vector("advantages", advantages, length=cu_seqlens.numel() - 1)
    for name, tensor in (("cu_seqlens", cu_seqlens), ("advantages", advantages)):
        if tensor.device != device:
            raise ValueError(f"{name} must be on {device}, got {tensor.device}")
    vectors = tuple(
        _token_vector(name, tensor, num_tokens, device)
        for name, tensor in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("token_mask", token_mask))
    )
    if token_mask is not None:
        check_bool("token_mask", token_mask)
    return vectors


def _mean_stats(stat_sums: torch.Tensor, num_kept_tokens: int) -> dict:
    """Detached per-token means over the kept (unmasked) tokens."""
    means = stat_sums.detach() / max(num_kept_tokens, 1)
    return {name: means[index] for index, name in enumerate(ppo_terms.STAT_NAMES)}


def fused_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    correct: torch.Tensor,
    *,
    group_size: int,
    alpha: float,
    backend: str = "auto",
    **ppo_options,
) -> tuple[torch.Tensor, dict]:
    """The paper's objective on packed sequences (Arora & Zanette 2025), equal to ``reference.policy_loss``.

    Rewards ``r_i = 1 - alpha * sigmoid((len_i - mean_c) / (std_c + 1e-7))`` for correct samples
    (0 otherwise; mean and population std over the group's correct samples) and RLOO advantages
    ``A_i = r_i - mean_{j != i} r_j`` within each group of ``group_size`` consecutive samples
    (``length_penalized_rloo``, native when built), then ``fused_ppo_loss``.

    Args (N response tokens of S packed samples):
        hidden: (N, H) float32, bfloat16 or float16 (float64 for tests): the hidden state that
            predicts each response token.
        weight: (V, H), ``hidden``'s dtype and device: the LM head.
        targets: (N,) int64 or int32 token ids in [0, V): the response tokens.
        cu_seqlens: (S + 1,) int32 or int64, starting at 0, non-decreasing, ending at N; sample s
            owns tokens ``cu_seqlens[s]:cu_seqlens[s+1]``, and their count is its length.
        correct: (S,) bool: whether sample s answered correctly.
        group_size: int >= 2 dividing S; the samples of one prompt are consecutive.
        alpha: float in [0, 1], the strength of the length penalty.
        backend: as for ``fused_logprobs``.
        ppo_options: the keyword options of ``fused_ppo_loss`` (old/ref log-probs, KL, clip,
            aggregation, token mask, norm length, temperature).

    Returns:
        ``(loss, stats)`` as ``fused_ppo_loss``; stats add ``reward_mean`` and ``advantage_mean``.
    """
    # correct and cu_seqlens are checked before the lengths are taken from them; fused_ppo_loss checks the rest
    check_correct_per_sequence(correct, cu_seqlens, _check_float_matrix("hidden", hidden).shape[0])
    rewards, advantages = length_penalized_rloo(correct, losses.sequence_lengths(cu_seqlens), group_size, alpha)
    loss, stats = fused_ppo_loss(hidden, weight, targets, cu_seqlens, advantages, backend=backend, **ppo_options)
    stats["reward_mean"] = rewards.mean()
    stats["advantage_mean"] = advantages.mean()
    return loss, stats
