"""The per-token PPO policy loss on packed sequences, KL terms and the four aggregation modes.

Packed layout: the response tokens of S sequences are concatenated into one dimension of
N tokens; ``cu_seqlens`` (S + 1,) holds the boundaries, sequence ``s`` owning tokens
``cu_seqlens[s] : cu_seqlens[s + 1]``. No padding anywhere.

Every aggregation mode is linear in the per-token losses, so it is expressed as per-token
weights ``w`` with ``loss = sum_t w_t * loss_t`` (``aggregation_weights``); the fused ops
use the same weights in their epilogue.
"""

from __future__ import annotations

import torch

from effreason._validation import check_cu_seqlens, check_vector

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k3")


def sequence_lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Tokens per sequence, (S,) int64: ``cu_seqlens[1:] - cu_seqlens[:-1]``."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)


def expand_to_tokens(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Repeat a per-sequence value (S,) over that sequence's tokens, giving (N,)."""
    return torch.repeat_interleave(values, sequence_lengths(cu_seqlens), output_size=int(cu_seqlens[-1]))


def segment_sum(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Sum of the tokens of each sequence: (N,) -> (S,)."""
    sequence_ids = expand_to_tokens(torch.arange(cu_seqlens.numel() - 1, device=values.device), cu_seqlens)
    return torch.zeros(cu_seqlens.numel() - 1, dtype=values.dtype, device=values.device).index_add_(0, sequence_ids, values)


def aggregation_weights(
    cu_seqlens: torch.Tensor,
    loss_agg: str,
    *,
    token_mask: torch.Tensor | None = None,
    norm_length: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-token weights (N,) such that the aggregated loss is ``sum_t w_t * loss_t``.

    With ``m_t`` the token mask (1 when absent), ``n_s`` the unmasked tokens of sequence s,
    ``T = sum_s n_s`` and S sequences:

    * ``token-mean`` (DAPO, verl default):          ``w_t = m_t / T``
    * ``seq-mean-token-mean`` (the paper's):         ``w_t = m_t / (S * n_s)``
    * ``seq-mean-token-sum``:                        ``w_t = m_t / S``
    * ``seq-mean-token-sum-norm`` (Dr. GRPO):        ``w_t = m_t / (S * L)`` with ``L = norm_length``,
      by default the longest sequence of the batch (Dr. GRPO uses the generation budget).

    Fully masked sequences (or batches) get zero weight, never NaN.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGREGATIONS}, got {loss_agg!r}")
    num_tokens = int(cu_seqlens[-1])
    num_sequences = cu_seqlens.numel() - 1
    if token_mask is None:
        mask = torch.ones(num_tokens, dtype=dtype, device=cu_seqlens.device)
    else:
        mask = token_mask.to(dtype)
    if loss_agg == "token-mean":
        return mask / mask.sum().clamp_min(1.0)
    if loss_agg == "seq-mean-token-mean":
        tokens_per_sequence = segment_sum(mask, cu_seqlens).clamp_min(1.0)
        return mask / (num_sequences * expand_to_tokens(tokens_per_sequence, cu_seqlens))
    if loss_agg == "seq-mean-token-sum":
        return mask / num_sequences
    if norm_length is None:
        norm_length = max(int(sequence_lengths(cu_seqlens).max()), 1)
    if norm_length <= 0:
        raise ValueError(f"norm_length must be > 0, got {norm_length}")
    return mask / (num_sequences * float(norm_length))


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL divergence").

    * ``k1``: ``logp - logp_ref`` (unbiased, can be negative; the paper's, in the reward)
    * ``k3``: ``exp(logp_ref - logp) - (logp_ref - logp) - 1`` (unbiased, always >= 0)
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.exp(-log_ratio) + log_ratio - 1.0


def kl_shaped_token_advantages(
    advantages: torch.Tensor, cu_seqlens: torch.Tensor, token_kl: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token advantages with the KL subtracted from the per-token reward (gamma = 1, the paper's setup).

    The sequence reward arrives at the last token and each token pays ``kl_coef * kl_t``,
    so the return of token t is ``A_s - kl_coef * sum_{t' >= t in s} kl_t'``. (S,) -> (N,).
    """
    if token_kl.numel() == 0:
        return token_kl.clone()
    prefix = torch.cumsum(token_kl, dim=0)  # (N,)
    sequence_ends = cu_seqlens[1:].clamp_min(1) - 1
    total_through_end = expand_to_tokens(prefix[sequence_ends], cu_seqlens)
    kl_to_go = total_through_end - prefix + token_kl
    return expand_to_tokens(advantages, cu_seqlens).to(token_kl.dtype) - kl_coef * kl_to_go


def ppo_clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: tuple[float, float] = (0.2, 0.2),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss (Schulman et al. 2017) with separate low/high clip (DAPO).

    ``ratio = exp(logp - logp_old)``;
    ``loss_t = max(-A_t * ratio, -A_t * clip(ratio, 1 - eps_low, 1 + eps_high))``.
    Returns the per-token loss (N,) and a bool mask of the tokens where the clip is active.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps[0], 1.0 + clip_eps[1])
    return torch.maximum(unclipped, clipped), clipped > unclipped


def check_clip_eps(clip_eps) -> tuple[float, float]:
    """Validate a PPO clip range ``(low, high)``: ``0 <= low < 1``, ``high >= 0``."""
    if not isinstance(clip_eps, (tuple, list)) or len(clip_eps) != 2:
        raise ValueError(f"clip_eps must be a pair (low, high), got {clip_eps!r}")
    low, high = float(clip_eps[0]), float(clip_eps[1])
    if not (0.0 <= low < 1.0 and high >= 0.0):
        raise ValueError(f"clip_eps must satisfy 0 <= low < 1 and high >= 0, got {clip_eps!r}")
    return low, high


def check_kl_options(kl_coef, kl_estimator, kl_in_reward, old_logprobs, ref_logprobs) -> None:
    """Validate the KL options of ``policy_loss`` (and of the fused ops that mirror it)."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")
    if kl_coef > 0 and kl_in_reward and old_logprobs is None:
        raise ValueError("kl_in_reward needs old_logprobs (the KL enters the reward at sampling time)")


def _check_token_tensor(name: str, tensor: torch.Tensor | None, num_tokens: int) -> None:
    if tensor is not None:
        check_vector(name, tensor, length=num_tokens)


def policy_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    cu_seqlens: torch.Tensor,
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
) -> tuple[torch.Tensor, dict]:
    """The packed PPO policy loss from per-token log-probs.

    Args:
        logprobs: (N,) current per-token log-probs (differentiable).
        advantages: (S,) per-sequence advantages (treated as constants).
        cu_seqlens: (S + 1,) int boundaries of the packed sequences.
        old_logprobs: (N,) sampling-time log-probs; ``None`` means on-policy (``logprobs.detach()``).
        ref_logprobs: (N,) reference-policy log-probs, needed when ``kl_coef > 0``.
        kl_coef: KL coefficient. With ``kl_in_reward`` the KL of ``old_logprobs`` vs
            ``ref_logprobs`` is subtracted from the per-token reward (the paper, k1, 0.001;
            see ``kl_shaped_token_advantages``); otherwise ``kl_coef * kl_t`` is added to each
            token's loss.
        clip_eps: (low, high) PPO clip range.
        loss_agg: one of ``LOSS_AGGREGATIONS`` (see ``aggregation_weights``).
        token_mask: (N,) bool, False tokens are left out of the loss.
        norm_length: the constant of ``seq-mean-token-sum-norm``.

    Returns:
        ``(loss, stats)``: the scalar loss and detached 0-d tensors ``clip_fraction``, ``kl_mean``
        (over unmasked tokens; 0 without a reference) and ``ratio_mean``.
    """
    check_vector("logprobs", logprobs)
    num_tokens = logprobs.numel()
    check_cu_seqlens(cu_seqlens, num_tokens)
    num_sequences = cu_seqlens.numel() - 1
    check_vector("advantages", advantages, length=num_sequences)
    for name, tensor in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("token_mask", token_mask)):
        _check_token_tensor(name, tensor, num_tokens)
    clip_eps = check_clip_eps(clip_eps)
    check_kl_options(kl_coef, kl_estimator, kl_in_reward, old_logprobs, ref_logprobs)
    use_kl = kl_coef > 0

    compute_dtype = torch.promote_types(logprobs.dtype, torch.float32)
    logprobs = logprobs.to(compute_dtype)
    old = logprobs.detach() if old_logprobs is None else old_logprobs.to(compute_dtype)
    mask = torch.ones(num_tokens, dtype=torch.bool, device=logprobs.device) if token_mask is None else token_mask
    advantages = advantages.to(compute_dtype)
    if use_kl and kl_in_reward:
        token_kl = kl_penalty(old, ref_logprobs.to(compute_dtype), kl_estimator) * mask
        token_advantages = kl_shaped_token_advantages(advantages, cu_seqlens, token_kl, kl_coef)
    else:
        token_advantages = expand_to_tokens(advantages, cu_seqlens)
    token_loss, clipped = ppo_clipped_surrogate(logprobs, old, token_advantages, clip_eps)
    kl_tokens = None
    if use_kl:
        kl_tokens = kl_penalty(logprobs, ref_logprobs.to(compute_dtype), kl_estimator)
        if not kl_in_reward:
            token_loss = token_loss + kl_coef * kl_tokens
    weights = aggregation_weights(cu_seqlens, loss_agg, token_mask=token_mask, norm_length=norm_length, dtype=compute_dtype)
    loss = (weights * token_loss).sum()
    return loss, _loss_stats(logprobs, old, clipped, kl_tokens, mask)


def _loss_stats(logprobs, old_logprobs, clipped, kl_tokens, mask) -> dict:
    """Detached statistics over unmasked tokens."""
    with torch.no_grad():
        count = mask.sum().clamp_min(1)
        ratio = torch.exp(logprobs - old_logprobs)
        return {
            "clip_fraction": (clipped & mask).sum() / count,
            "ratio_mean": (ratio * mask).sum() / count,
            "kl_mean": torch.zeros((), device=logprobs.device) if kl_tokens is None else (kl_tokens * mask).sum() / count,
        }
