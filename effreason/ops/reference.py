"""The pure-torch oracle of the fused ops: materialise the logits, then apply the RL math.

Every fused backend (chunked torch, Triton, CUDA) is tested and benchmarked against these
functions. They compute in ``promote(hidden.dtype, float32)``: float32 logits for
bf16/fp16/fp32 inputs, float64 when given float64 (the tests' ground truth).
Memory is O(N * V): use them as the reference, not in training.
"""

from __future__ import annotations

import torch

from effreason import losses
from effreason._validation import check_correct_per_sequence
from effreason.ops.segment import length_penalized_rloo_torch


def _tempered_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T / temperature)`` in float32 or better, (N, V)."""
    compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(compute_dtype) @ weight.to(compute_dtype).T  # (N, V)
    return torch.log_softmax(logits / temperature, dim=-1)


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token ``log_softmax(hidden @ weight.T / temperature)[target]``, (N,).

    hidden (N, H), weight (V, H) the LM head, targets (N,) int64 in [0, V).
    """
    log_probs = _tempered_log_softmax(hidden, weight, temperature)  # (N, V)
    return log_probs.gather(1, targets.view(-1, 1)).squeeze(1)


def token_logprobs_and_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies ``H_t = -sum_v p_tv log p_tv`` of the tempered distribution, both (N,)."""
    log_probs = _tempered_log_softmax(hidden, weight, temperature)  # (N, V)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return log_probs.gather(1, targets.view(-1, 1)).squeeze(1), entropy


def ppo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    advantages: torch.Tensor,
    *,
    temperature: float = 1.0,
    **loss_options,
) -> tuple[torch.Tensor, dict]:
    """PPO loss from hidden states and per-sequence advantages (S,).

    ``loss_options`` are those of ``effreason.losses.policy_loss`` (old/ref log-probs, KL,
    clip, aggregation, token mask). Stats add ``entropy_mean`` over unmasked tokens.
    """
    logprobs, entropy = token_logprobs_and_entropy(hidden, weight, targets, temperature)
    loss, stats = losses.policy_loss(logprobs, advantages, cu_seqlens, **loss_options)
    mask = loss_options.get("token_mask")
    with torch.no_grad():
        if mask is None:
            stats["entropy_mean"] = entropy.mean() if entropy.numel() else entropy.sum()
        else:
            stats["entropy_mean"] = (entropy * mask).sum() / mask.sum().clamp_min(1)
    return loss, stats


def policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    correct: torch.Tensor,
    *,
    group_size: int,
    alpha: float,
    temperature: float = 1.0,
    **loss_options,
) -> tuple[torch.Tensor, dict]:
    """The paper's whole objective on packed sequences, the oracle of ``effreason.ops.fused_policy_loss``.

    Lengths are ``cu_seqlens[1:] - cu_seqlens[:-1]``; rewards are the paper's length-normalised
    reward of ``correct`` and those lengths (``effreason.rewards.length_penalized_reward``),
    advantages their leave-one-out baseline (``effreason.advantages.rloo_advantages``), then
    ``ppo_loss``. Stats add ``reward_mean`` and ``advantage_mean``.
    """
    check_correct_per_sequence(correct, cu_seqlens, targets.shape[0])
    lengths = losses.sequence_lengths(cu_seqlens)
    rewards, advantages = length_penalized_rloo_torch(correct, lengths, group_size, alpha)
    loss, stats = ppo_loss(hidden, weight, targets, cu_seqlens, advantages, temperature=temperature, **loss_options)
    stats["reward_mean"] = rewards.mean()
    stats["advantage_mean"] = advantages.mean()
    return loss, stats
