"""TRL's GRPO policy loss computed by ``effreason.ops.fused_ppo_loss`` from the last hidden states.

``GRPOTrainer._compute_loss`` (TRL) forms per-token log-probs through its LM head, then
``loss_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t`` with
``r_t = exp(logp_t - old_t)`` and aggregates by ``loss_type``. The same loss is one call of
``fused_ppo_loss`` on the backbone's last hidden states and the LM head weight, so the (N, V)
logits never exist and the gradients are formed during the forward. Each ``loss_type`` maps to
one of our aggregations, up to a constant factor::

    grpo     seq-mean-token-mean      / gradient_accumulation_steps
    bnpo     token-mean               / gradient_accumulation_steps
    dr_grpo  seq-mean-token-sum-norm  (norm_length = max_completion_length) / gradient_accumulation_steps
    dapo     seq-mean-token-sum       * S / (num_items_in_batch / num_processes * accumulation / steps_per_generation)

(``S`` the micro-batch's completions; in evaluation the accumulation factors are 1). Options of
TRL's loss that have no exact equivalent raise ``ValueError`` naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effreason.ops import fused_ppo_loss
from effreason.ops.fused import BACKENDS

LOSS_TYPE_AGGREGATIONS = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "seq-mean-token-sum",
}
"""TRL ``GRPOConfig.loss_type`` -> ``fused_ppo_loss(loss_agg=...)``."""

_MULTIMODAL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                      "mm_token_type_ids", "image_position_ids", "num_images")


@dataclass(frozen=True)
class GRPOLossSettings:
    """The fused loss's options, read once from a TRL ``GRPOTrainer`` and validated on construction.

    Attributes:
        loss_type: TRL's ``loss_type``, one of ``LOSS_TYPE_AGGREGATIONS``.
        clip_eps: ``(epsilon, epsilon_high)``, TRL's clip range (default 0.2 both sides).
        beta: the KL coefficient; the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` is added to the loss.
        temperature: the sampling temperature the logits are divided by.
        max_completion_length: the constant of ``dr_grpo``.
        backend: the ``fused_ppo_loss`` backend (``"auto"``: CUDA or Triton on GPUs, torch on the CPU).
    """

    loss_type: str
    clip_eps: tuple[float, float]
    beta: float
    temperature: float
    max_completion_length: int | None
    backend: str = "auto"

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPE_AGGREGATIONS:
            raise ValueError(
                f"loss_type={self.loss_type!r} has no exact equivalent in fused_ppo_loss; "
                f"use one of {sorted(LOSS_TYPE_AGGREGATIONS)} or TRL's own GRPOTrainer"
            )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.loss_type == "dr_grpo" and not (self.max_completion_length or 0) > 0:
            raise ValueError(f"loss_type='dr_grpo' needs max_completion_length > 0, got {self.max_completion_length!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def loss_agg(self) -> str:
        return LOSS_TYPE_AGGREGATIONS[self.loss_type]

    @classmethod
    def from_trainer(cls, trainer, backend: str = "auto") -> "GRPOLossSettings":
        """The settings of ``trainer`` (a TRL ``GRPOTrainer``); ValueError for options without an exact equivalent."""
        check_supported_options(trainer)
        return cls(
            loss_type=trainer.loss_type,
            clip_eps=(float(trainer.epsilon_low), float(trainer.epsilon_high)),
            beta=float(trainer.beta),
            temperature=float(trainer.temperature),
            max_completion_length=trainer.max_completion_length,
            backend=backend,
        )


def check_supported_options(trainer) -> None:
    """Raise ValueError naming the first option of ``trainer`` that the fused loss does not reproduce exactly."""
    args = trainer.args
    unsupported = (
        ("importance_sampling_level='sequence' (GSPO)", "importance_sampling_level='token'",
         getattr(trainer, "importance_sampling_level", "token") != "token"),
        ("delta (two-sided clipping)", "delta=None", getattr(args, "delta", None) is not None),
        ("use_bias_correction_kl (the KL term times the ratio)", "use_bias_correction_kl=False",
         trainer.beta != 0 and getattr(args, "use_bias_correction_kl", False)),
        ("top_entropy_quantile < 1", "top_entropy_quantile=1.0", getattr(trainer, "top_entropy_quantile", 1.0) < 1.0),
        ("off_policy_mask_threshold", "off_policy_mask_threshold=None",
         getattr(trainer, "off_policy_mask_threshold", None) is not None),
        ("vllm_importance_sampling_correction", "vllm_importance_sampling_correction=False",
         getattr(trainer, "use_vllm", False) and getattr(trainer, "vllm_importance_sampling_correction", False)),
        ("entropy bonus (entropy_coef, use_adaptive_entropy)", "entropy_coef=0.0",
         getattr(trainer, "_entropy_bonus_enabled", False)),
        ("MoE load-balancing loss (router_aux_loss_coef)", "router_aux_loss_coef=0.0",
         getattr(trainer, "aux_loss_enabled", False)),
    )
    for option, fix, used in unsupported:
        if used:
            raise ValueError(
                f"the fused loss has no exact equivalent of TRL's {option}: set {fix} in GRPOConfig, "
                "or use trl.GRPOTrainer"
            )
    check_lm_head(trainer.accelerator.unwrap_model(trainer.model))


def check_lm_head(model) -> None:
    """The fused op computes ``hidden @ W.T``: no bias, no logit scale or soft-capping."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"model must have an output embedding (LM head) with a weight, got {type(head).__name__}")
    if getattr(head, "bias", None) is not None:
        raise ValueError("the fused loss does not support an LM head with a bias")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise ValueError(f"the fused loss does not support the model's {name}={value}")


def last_hidden_states(trainer, model, inputs) -> torch.Tensor:
    """(B, C, H): the last hidden state that predicts each of the C completion tokens.

    The model runs through its wrapper (DDP, PEFT) under the trainer's autocast with
    ``output_hidden_states=True`` and ``logits_to_keep=1``, so its LM head scores one position.
    """
    for name in _MULTIMODAL_INPUTS:
        if inputs.get(name) is not None:
            raise ValueError(f"the fused loss supports text-only inputs, got {name!r}")
    completion_ids = inputs["completion_ids"]  # (B, C)
    input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)  # (B, P + C)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with trainer.accelerator.autocast():
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
            use_cache=False,
        )
    num_completion = completion_ids.shape[1]
    return outputs.hidden_states[-1][:, -num_completion - 1 : -1]


def lm_head_weight(trainer, model) -> torch.Tensor:
    """(V, H): the LM head weight, gathered when sharded (FSDP2 DTensor)."""
    weight = trainer.accelerator.unwrap_model(model).get_output_embeddings().weight
    return weight.full_tensor() if hasattr(weight, "full_tensor") else weight


def fused_grpo_loss(trainer, model, inputs, settings: GRPOLossSettings) -> torch.Tensor:
    """TRL's GRPO loss of one micro-batch (``inputs`` from ``_generate_and_score_completions``) through ``fused_ppo_loss``.

    Equal to TRL's ``GRPOTrainer._compute_loss`` for the options ``GRPOLossSettings`` accepts; logs
    TRL's ``entropy``, ``kl`` (when ``beta > 0``) and ``clip_ratio/region_mean`` metrics.
    """
    advantages = inputs["advantages"]
    if advantages.dim() != 1:
        raise ValueError(f"the fused loss takes one advantage per completion, got shape {tuple(advantages.shape)}")
    completion_ids = inputs["completion_ids"]  # (B, C)
    num_sequences, num_completion = completion_ids.shape
    mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    weight = lm_head_weight(trainer, model)  # (V, H)
    hidden = last_hidden_states(trainer, model, inputs).to(weight.dtype)  # (B, C, H)

    cu_seqlens = torch.arange(0, (num_sequences + 1) * num_completion, num_completion, device=hidden.device)  # (B + 1,)
    old = inputs.get("old_per_token_logps")
    ref = inputs.get("ref_per_token_logps") if settings.beta != 0 else None
    with torch.autocast(hidden.device.type, enabled=False):
        loss, stats = fused_ppo_loss(
            hidden.reshape(num_sequences * num_completion, -1), weight, completion_ids.reshape(-1), cu_seqlens,
            advantages.float(),
            old_logprobs=None if old is None else old.reshape(-1),
            ref_logprobs=None if ref is None else ref.reshape(-1),
            kl_coef=settings.beta, kl_estimator="k3", clip_eps=settings.clip_eps, loss_agg=settings.loss_agg,
            token_mask=mask.reshape(-1).bool(), norm_length=settings.max_completion_length,
            temperature=settings.temperature, backend=settings.backend,
        )
    training = trainer.model.training
    _log_metrics(trainer, stats, mask, settings, "train" if training else "eval")
    return loss * _loss_scale(trainer, inputs, settings, num_sequences, training)


def _loss_scale(trainer, inputs, settings: GRPOLossSettings, num_sequences: int, training: bool) -> float | torch.Tensor:
    """The factor from our aggregation to TRL's (see the module docstring)."""
    accumulation = trainer.current_gradient_accumulation_steps if training else 1
    if settings.loss_type != "dapo":
        return 1.0 / accumulation
    normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
    if training:
        normalizer = normalizer * accumulation / trainer.args.steps_per_generation
    return num_sequences / normalizer


def _log_metrics(trainer, stats: dict, mask: torch.Tensor, settings: GRPOLossSettings, mode: str) -> None:
    """TRL's per-token metrics, token-weighted over all processes."""
    count = mask.sum().float()
    names = {"entropy": "entropy_mean", "clip_ratio/region_mean": "clip_fraction"}
    if settings.beta != 0:
        names["kl"] = "kl_mean"
    local = torch.stack([stats[stat] * count for stat in names.values()] + [count])
    totals = trainer.accelerator.reduce(local, reduction="sum")
    for index, metric in enumerate(names):
        trainer._metrics[mode][metric].append((totals[index] / totals[-1].clamp(min=1.0)).item())

