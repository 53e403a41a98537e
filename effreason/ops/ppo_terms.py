"""The per-token RL math of the fused PPO loss: what every backend's chunk loop applies to its log-probs.

The fused loss is ``loss = sum_t w_t * loss_t(logp_t)`` (``effreason.losses``), so the chunk
loops only need, for each token, its weighted loss and ``coef_t = w_t * dloss_t / dlogp_t``;
the gradient with respect to the logits is then ``coef_t * (onehot(target_t) - p_t)``.

* ``token_inputs``: per-token advantages and aggregation weights (N,), computed once per call.
* ``PPOTerms``: the per-token loss, coefficient and statistics of a chunk of log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effreason import losses

STAT_NAMES = ("clip_fraction", "ratio_mean", "kl_mean", "entropy_mean")
"""The per-token statistics the fused ops sum (then divide by the unmasked token count)."""


def token_inputs(
    cu_seqlens: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    kl_coef: float,
    kl_estimator: str,
    kl_in_reward: bool,
    loss_agg: str,
    token_mask: torch.Tensor | None,
    norm_length: float | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages and aggregation weights, both (N,) in ``dtype``.

    Advantages are ``A_s`` repeated over sequence s, or with ``kl_in_reward`` the KL-shaped
    return ``A_s - kl_coef * sum_{t' >= t} kl(old_t', ref_t')`` (``losses.kl_shaped_token_advantages``);
    weights are ``losses.aggregation_weights`` (0 on masked tokens).
    """
    advantages = advantages.to(dtype)
    if kl_coef > 0 and kl_in_reward:
        mask = 1.0 if token_mask is None else token_mask.to(dtype)
        token_kl = losses.kl_penalty(old_logprobs.to(dtype), ref_logprobs.to(dtype), kl_estimator) * mask
        token_advantages = losses.kl_shaped_token_advantages(advantages, cu_seqlens, token_kl, kl_coef)
    else:
        token_advantages = losses.expand_to_tokens(advantages, cu_seqlens)
    weights = losses.aggregation_weights(cu_seqlens, loss_agg, token_mask=token_mask, norm_length=norm_length, dtype=dtype)
    return token_advantages, weights


@dataclass(frozen=True)
class PPOTerms:
    """The PPO clipped surrogate plus optional KL term of ``effreason.losses.policy_loss``, per token.

    ``ratio = exp(logp - old)`` (1 on-policy, when ``old_logprobs`` is None);
    ``loss_t = max(-A_t ratio, -A_t clip(ratio, 1 - clip_low, 1 + clip_high)) [+ kl_coef * kl_t]``;
    ``dloss_t/dlogp_t = -A_t ratio`` where the clip is inactive (0 where active)
    ``+ kl_coef * dkl_t/dlogp_t`` (k1: 1, k3: ``1 - exp(ref - logp)``).
    """

    token_advantages: torch.Tensor  # (N,)
    token_weights: torch.Tensor  # (N,)
    old_logprobs: torch.Tensor | None  # (N,)
    ref_logprobs: torch.Tensor | None  # (N,)
    kl_coef: float
    kl_estimator: str
    kl_in_loss: bool
    clip_low: float
    clip_high: float

    def __call__(self, logprobs: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the tokens ``start : start + C`` with log-probs (C,): ``(weighted_loss_sum (), coef (C,), stat_sums (3,))``.

        ``stat_sums`` = (clipped tokens, sum of ratios, sum of KL) over the chunk, weights not applied.
        """
        chunk = slice(start, start + logprobs.numel())
        dtype = logprobs.dtype
        advantages = self.token_advantages[chunk]
        if self.old_logprobs is None:
            ratio = torch.ones_like(logprobs)
        else:
            ratio = torch.exp(logprobs - self.old_logprobs[chunk].to(dtype))
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high)
        clip_active = clipped > unclipped
        token_loss = torch.maximum(unclipped, clipped)
        dloss = torch.where(clip_active, torch.zeros_like(unclipped), unclipped)
        kl_sum = logprobs.new_zeros(())
        if self.ref_logprobs is not None and self.kl_coef > 0:
            kl, dkl = self._kl_and_derivative(logprobs, self.ref_logprobs[chunk].to(dtype))
            kl_sum = kl.sum()
            if self.kl_in_loss:
                token_loss = token_loss + self.kl_coef * kl
                dloss = dloss + self.kl_coef * dkl
        weights = self.token_weights[chunk]
        stat_sums = torch.stack([clip_active.sum().to(dtype), ratio.sum(), kl_sum])
        return (weights * token_loss).sum(), weights * dloss, stat_sums

    def _kl_and_derivative(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``losses.kl_penalty`` and its derivative with respect to ``logprobs``, both (C,)."""
        kl = losses.kl_penalty(logprobs, ref_logprobs, self.kl_estimator)
        if self.kl_estimator == "k1":
            return kl, torch.ones_like(kl)
        return kl, 1.0 - torch.exp(ref_logprobs - logprobs)
