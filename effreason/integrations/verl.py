"""effreason from verl: the paper's objective as entries of verl's registries (``pip install verl`` beside effreason).

verl scores each response on its own (``compute_score`` in its reward managers) and forms
group-relative quantities in its advantage estimators, which see every response of a prompt
through the ``uid`` index. The paper's reward is group-relative, so it splits the same way:

* ``compute_score``: 1.0 when the response's final answer matches the ground truth
  (``effreason.grading``, by default the paper's last ``\\boxed{}``), else 0.0;
* ``paper_rloo_advantage`` (registered as ``ADVANTAGE_ESTIMATOR``): within each ``uid`` group, the
  paper's reward ``1 - alpha * sigmoid((len - mean_correct) / (std_correct + 1e-7))`` of the correct
  responses (0 for the others; ``len`` = response tokens) and its RLOO advantage;
* ``ppo_policy_loss`` (registered as ``POLICY_LOSS``): the per-token PPO clipped surrogate
  (``effreason.losses.ppo_clipped_surrogate``, clip ``actor.clip_ratio_low/high``) aggregated by
  verl's ``agg_loss``. It is verl's ``vanilla`` loss without the dual clip (``clip_ratio_c``) and
  the log-ratio clamp at +-20, as in the paper.

Call ``register(alpha)`` in the process that runs verl's trainer (the driver computes advantages),
then select ``algorithm.adv_estimator=effreason_paper_rloo``,
``actor_rollout_ref.actor.policy_loss.loss_mode=effreason_ppo`` and
``custom_reward_function.path=<this file> custom_reward_function.name=compute_score``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from effreason._validation import check_unit_interval
from effreason.advantages import rloo_advantages
from effreason.data.scoring import DEFAULT_ANSWER_KIND
from effreason.grading import grade
from effreason.losses import ppo_clipped_surrogate
from effreason.rewards import length_penalized_reward

POLICY_LOSS = "effreason_ppo"
ADVANTAGE_ESTIMATOR = "effreason_paper_rloo"
CORRECT_THRESHOLD = 0.5
"""A response whose summed token-level reward exceeds this is correct (``compute_score`` gives 1 or 0)."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, *, answer_kind=DEFAULT_ANSWER_KIND, **_):
    """verl's ``compute_score`` signature: 1.0 when ``solution_str`` answers ``ground_truth``, else 0.0.

    ``answer_kind`` as in ``effreason.grading.extract_answer`` (default the last ``\\boxed{}``);
    ``data_source`` and ``extra_info`` are not used. Never raises on odd model output.
    """
    return 1.0 if grade(solution_str, str(ground_truth), kind=answer_kind) else 0.0


def paper_rloo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    alpha: float = 0.2,
    config=None,
    **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's reward and RLOO advantage per ``uid`` group, as a verl advantage estimator.

    Args:
        token_level_rewards: (B, T) the reward manager's scores (``compute_score`` at the last token);
            a response is correct when its row sums to more than ``CORRECT_THRESHOLD``.
        response_mask: (B, T) 1 on response tokens; a response's length is its row sum.
        index: (B,) the ``uid`` of each response's prompt (groups need not be contiguous).
        alpha: the length-penalty strength in [0, 1].
        config: verl's ``AlgoConfig`` (unused).

    Returns:
        ``(advantages, returns)``, both (B, T): ``A_i = r_i - mean_{j != i} r_j`` over the group
        (0 for a group of one) broadcast over the response tokens.
    """
    correct = token_level_rewards.sum(dim=-1) > CORRECT_THRESHOLD  # (B,)
    lengths = response_mask.sum(dim=-1)  # (B,)
    advantages = torch.zeros(correct.shape[0], dtype=torch.float32)
    for members in _groups(index):
        rows = torch.as_tensor(members)
        rewards = length_penalized_reward(correct[rows].cpu(), lengths[rows].cpu(), len(members), alpha)
        if len(members) > 1:
            advantages[rows] = rloo_advantages(rewards, len(members))
    token_advantages = advantages.to(response_mask.device).unsqueeze(-1) * response_mask  # (B, T)
    return token_advantages, token_advantages


def _groups(index: np.ndarray) -> list[list[int]]:
    """Row numbers of each distinct ``index`` value, in order of first appearance."""
    members: dict = {}
    for row, uid in enumerate(index):
        members.setdefault(uid, []).append(row)
    return list(members.values())


def ppo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """verl's policy-loss signature: the per-token PPO clipped surrogate, aggregated by ``agg_loss``.

    ``loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_ratio_low, 1 + clip_ratio_high))``,
    ``r_t = exp(log_prob_t - old_log_prob_t)``, times ``rollout_is_weights`` when given; all
    tensors (B, T). ``config`` is verl's ``ActorConfig`` (clip ratios, ``global_batch_info``).
    Returns ``(loss, metrics)`` with verl's ``actor/pg_clipfrac`` and ``actor/ppo_kl``.
    """
    clip_low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    clip_high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    token_loss, clipped = ppo_clipped_surrogate(log_prob, old_log_prob, advantages, (clip_low, clip_high))
    if rollout_is_weights is not None:
        token_loss = token_loss * rollout_is_weights
    loss = core_algos.agg_loss(
        loss_mat=token_loss, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    with torch.no_grad():
        count = response_mask.sum().clamp_min(1)
        metrics = {
            "actor/pg_clipfrac": ((clipped * response_mask).sum() / count).item(),
            "actor/ppo_kl": (((old_log_prob - log_prob) * response_mask).sum() / count).item(),
        }
    return loss, metrics


def register(alpha: float = 0.2) -> None:
    """Put ``ppo_policy_loss`` and ``paper_rloo_advantage`` (with ``alpha``) into verl's registries,
    as ``POLICY_LOSS`` and ``ADVANTAGE_ESTIMATOR``. Calling it again replaces our entries."""
    alpha = check_unit_interval("alpha", alpha)
    core_algos.register_policy_loss(POLICY_LOSS)(ppo_policy_loss)
    core_algos.ADV_ESTIMATOR_REGISTRY.pop(ADVANTAGE_ESTIMATOR, None)
    core_algos.register_adv_est(ADVANTAGE_ESTIMATOR)(functools.partial(paper_rloo_advantage, alpha=alpha))
