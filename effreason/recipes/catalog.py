"""The registered recipes: the paper's method and the length-shortening methods published since.

Token counts in these settings (DLER's truncation length, ThinkPrune's first limit) are sized for the
built-in miniature, whose warm start answers in 50 to 240 tokens (``--max-new-tokens`` 256); on another
model pass your own with ``--max-new-tokens`` (explicit flags win over a recipe's).
"""

from __future__ import annotations

from effreason.recipes.registry import register_recipe


@register_recipe("paper", source="Arora & Zanette 2025, arXiv 2502.04463", knob="alpha")
def paper() -> dict:
    """The paper's length-normalised reward with RLOO (Arora & Zanette 2025, arXiv 2502.04463).

    For the k samples of a prompt, with mean and population std of the lengths of its correct ones::

        r_i = 1[correct_i] * (1 - alpha * sigmoid((len_i - mean) / (std + 1e-7)))
        A_i = r_i - mean_{j != i} r_j

    ``alpha`` (``--alpha``, the knob of ``paper:ALPHA``) trades accuracy for tokens. The fused ops
    compute reward and advantage inside the loss.
    """
    return dict(reward="paper", advantage="rloo")


@register_recipe("dler", source="Liu et al. 2025, arXiv 2510.15110", knob="max_new_tokens")
def dler() -> dict:
    """DLER, Doing Length pEnalty Right (Liu et al. 2025, arXiv 2510.15110): truncation, done right.

    Rollouts stop at the limit ``L`` (``--max-new-tokens``, the knob of ``dler:L``; 128 here, half the
    miniature's usual limit) and a response over it earns nothing::

        r_i = 1[correct_i and len_i <= L]
        A_i = (c_i - mean_batch c) / std_batch c,   c_i = r_i - mean_group r      (batch-wise normalisation)

    with the PPO clip raised above 1 (``--clip-eps-high`` 0.28, DAPO's clip-higher) and dynamic
    sampling: a group whose rewards are all equal is dropped and fresh prompts refill the step.
    """
    return dict(reward="truncation", max_new_tokens=128, advantage="group-mean-batch-std", clip_eps_high=0.28,
                group_filter="dynamic-sampling")


@register_recipe("laser-d", source="Liu et al. 2025, arXiv 2505.15612")
def laser_d() -> dict:
    """LASER-D, the dynamic and difficulty-aware length-based step reward (Liu et al. 2025, arXiv 2505.15612).

    A correct response within its band's target length earns a bonus::

        r_i = 1[correct_i] + lambda * 1[correct_i and len_i <= L_band(i)]       (lambda = --laser-bonus 0.5)

    The band is the prompt's group accuracy this step (>= 2/3 easy, >= 1/3 medium, else hard); each
    band's target is the shortest length within which the band's rollouts keep one correct answer
    expected, re-chosen after every step (``effreason.rewards.laser``).
    """
    return dict(reward="laser-d")


@register_recipe("alp", source="Xiang et al. 2025, arXiv 2506.05256", knob="alp_beta")
def alp() -> dict:
    """ALP, the adaptive length penalty (Xiang et al. 2025, arXiv 2506.05256).

    With ``p`` the prompt's solve rate over its k samples this step and ``N`` the token budget::

        r_i = 1[correct_i] - beta * max(p, 1/k) * len_i / N

    so tokens cost most on prompts the model already solves (``--alp-beta``, the knob of ``alp:BETA``).
    """
    return dict(reward="alp")


@register_recipe("thinkprune", source="Hou et al. 2025, arXiv 2504.01296")
def thinkprune() -> dict:
    """ThinkPrune (Hou et al. 2025, arXiv 2504.01296): a hard token limit, tightened over rounds.

    Rollouts stop at the round's limit ``L_t`` and an unfinished response earns nothing::

        r_i = 1[correct_i and len_i <= L_t]

    The limits follow ThinkPrune's 4k -> 3k -> 2k rounds as fractions of the first, 224 tokens:
    224 from step 0, 168 from step 14, 112 from step 28 (``--token-limit-schedule 0:1,14:0.75,28:0.5``
    of ``--max-new-tokens 224``).
    """
    return dict(reward="truncation", max_new_tokens=224, token_limit_schedule="0:1,14:0.75,28:0.5")


@register_recipe("gfpo", source="Shrivastava et al. 2025, arXiv 2508.09726", knob="gfpo_keep")
def gfpo() -> dict:
    """GFPO, Group Filtered Policy Optimization (Shrivastava et al. 2025, arXiv 2508.09726).

    Sample a larger group (G' = ``--group-size`` 16), keep its k = ``--gfpo-keep`` 8 shortest samples
    (``--group-filter gfpo-shortest``; ``gfpo-token-efficiency`` keeps the k of highest reward / len) and
    train on those alone, with GRPO's advantage over the kept set S::

        r_i = 1[correct_i],   A_i = (r_i - mean_S r) / std_S r  for i in S, no gradient otherwise

    A step samples twice the tokens of the paper's, so under one rollout-token budget it takes half the steps.
    """
    return dict(reward="truncation", group_size=16, gfpo_keep=8, group_filter="gfpo-shortest", advantage="grpo")


@register_recipe("shorterbetter", source="Yi et al. 2025, arXiv 2504.21370", knob="shorterbetter_beta")
def shorterbetter() -> dict:
    """ShorterBetter (Yi et al. 2025, arXiv 2504.21370): the target is the group's shortest correct response.

    With SOL the length of the group's shortest correct sample (the group's mean length when none is
    correct), and GRPO's advantage::

        r_i = alpha * 1[correct_i] - beta * |len_i - SOL|       (--shorterbetter-alpha 2, --shorterbetter-beta 0.001)
    """
    return dict(reward="shorterbetter", advantage="grpo")


@register_recipe("l1-exact", source="Aggarwal & Welleck 2025, arXiv 2503.04697", knob="length_budget")
def l1_exact() -> dict:
    """L1-Exact, LCPO (Aggarwal & Welleck 2025, arXiv 2503.04697): hit the budget ``n_gold``.

    ``r_i = 1[correct_i] - beta * |n_gold - len_i|`` with ``n_gold`` = ``--length-budget`` (default
    ``--max-new-tokens``; the knob of ``l1-exact:N``) and beta = ``--l1-beta``.
    """
    return dict(reward="l1-exact")


@register_recipe("l1-max", source="Aggarwal & Welleck 2025, arXiv 2503.04697", knob="length_budget")
def l1_max() -> dict:
    """L1-Max, LCPO (Aggarwal & Welleck 2025, arXiv 2503.04697): stay under the budget ``n_gold``.

    ``r_i = 1[correct_i] * clip(beta * (n_gold - len_i) + delta, 0, 1)`` with ``n_gold`` = ``--length-budget``
    (the knob of ``l1-max:N``), beta = ``--l1-beta``, delta = ``--l1-delta``.
    """
    return dict(reward="l1-max")


@register_recipe("kimi", source="Kimi Team 2025, arXiv 2501.12599", knob="kimi_weight")
def kimi() -> dict:
    """Kimi k1.5's length reward (Kimi Team 2025, arXiv 2501.12599, sec. 2.3.3).

    With min/max length over the group, ``lambda_i = 0.5 - (len_i - min) / (max - min)`` and
    ``r_i = 1[correct_i] + w * (lambda_i if correct_i else min(0, lambda_i))``, w = ``--kimi-weight``.
    """
    return dict(reward="kimi")


@register_recipe("dapo-overlong", source="Yu et al. 2025, arXiv 2503.14476", knob="length_budget")
def dapo_overlong() -> dict:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), the length shaping alone.

    ``r_i = 1[correct_i] + penalty(len_i)``: 0 up to ``L_max - L_cache``, then falling linearly to -1 at
    ``L_max`` = ``--length-budget`` (the knob of ``dapo-overlong:N``), -1 beyond;
    ``L_cache`` = ``--dapo-cache-fraction`` of ``L_max``.
    """
    return dict(reward="dapo-overlong")
