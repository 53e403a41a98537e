"""How a training run uses device memory, worked out before any weight is loaded: ``--dry-run``, and the sizes
the real run takes (micro-batch token budget, KV-cache tokens).

    python -m effreason.train --preset paper-1.5b --model DIR --dry-run --device-memory 80

A step has two phases (the loop frees the gradients before each rollout)::

    rollout  master weights + AdamW state + reference + sampler weights + sampler workspace + KV cache
    update   master weights + AdamW state + reference + gradients + fixed update buffers + activations(T)
    kept     update + sampler weights + KV cache

When ``kept`` fits (on CUDA, unless ``--micro-batch-tokens`` is given, the budget shrinks to make it fit,
down to ``KEPT_MIN_MICRO_BATCH_TOKENS``), the sampler's weight copy and KV cache stay allocated from one rollout
to the next: the copy is refreshed in place after each optimizer step, so the decode graphs captured at
the first rollout stay valid (``sampler_resident``). Otherwise the loop frees both before each update,
so the device holds one phase at a time, and the next rollout allocates them and captures its graphs
again.

Both phases must stay under ``usable = gpu_memory_utilization * device memory - overhead`` (overhead: the CUDA
context and library workspaces, which torch's allocator does not see). Everything below is per process
(per rank); under FSDP2 the master weights, gradients and AdamW state are sharded ``world_size`` ways.

Resident state, for P parameters, compute dtype of c bytes (bf16: 2):

* master weights ``4 P``, gradients ``4 P``, AdamW ``8 P`` (exp_avg and exp_avg_sq, float32);
* the frozen reference (``--kl-coef > 0``, DPO) ``c P``, whole on every rank;
* the sampler's weights ``c P`` during the rollout: the compute-dtype copy on one process, the gathered
  parameters under FSDP2; none when the compute dtype is float32 on one process (it reads the master).

Update activations per micro-batch token (Qwen2/Llama decoder layer as Hugging Face computes it under
autocast, hidden H, attention width Q = heads * head_dim, KV width K = kv_heads * head_dim, MLP width I,
residual stream of r bytes: 4 with float32 master parameters, c under FSDP2), what autograd keeps for
backward, counted on the CPU with ``saved_tensors_hooks``::

    norms     2 * (4 H + r H)            each RMSNorm keeps its input in float32 and the normalised x
    inputs    5 c H  (autocast)          q, k, v, gate, up each keep their own cast of the normed input;
              2 r H  (no cast)           without autocast the two norm outputs are shared
    attention c Q + 2 c Kv + c Q + 4 n   q and k after RoPE, v, the output (the o_proj input), the fp32
                                         log-sum-exp of n heads; Kv = K, or Q when a mask makes SDPA
                                         repeat the KV heads
    mlp       4 c I                      gate, SiLU(gate), up, their product
    mask      c W                        the attention mask made additive per layer (W: mask width)

That is ``A`` per layer. Backward adds ``G = r H + c I`` (the residual stream's gradient, and at its peak
two new I-wide gradients in the SwiGLU backward while the saved product is already released). Per token:

    no checkpointing   L A + G + head        (L layers)
    checkpointing      L r H + A + G + head  (each layer keeps its input; one layer recomputed at a time)
    head               4 H + r H + h H + g H  (final norm, the LM-head input in its dtype h, and its
                                              gradient, formed in the forward by the fused loss)

plus the boolean mask, ``W`` bytes per token. W is the padded row width for padded micro-batches, T itself
for a packed micro-batch under SDPA (a (T, T) block-causal mask), and 0 with flash-attn's varlen kernel.
Fixed per micro-batch: under autocast a cast of every decoder weight (``c * linear parameters``), the
LM head's cast to its dtype, its float32 gradient accumulator (V H) and the fused ops' logits chunk; under
FSDP2 the gathered root and two gathered layers. The micro-batch budget is the largest T that fits.

KV cache: ``2 L kv_heads head_dim c_s`` bytes per token (``sampler.kv_cache.bytes_per_token``), c_s the
sampler weights' dtype; the cache takes what the rollout phase leaves, at most what the largest sampling
phase can use. A sequence that does not fit waits (the sampler preempts), so the run fits when one
sequence of the longest prompt plus response fits the cache and one such sequence fits a micro-batch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass

import torch

from effreason.models import pick_dtype
from effreason.ops import chunked
from effreason.ops.chunked_kernels import GPU_SCRATCH_BYTES
from effreason.sampler import engine as sampler_engine
from effreason.sampler import kv_cache

GIB = 1 << 30
CPU_MICRO_BATCH_TOKENS = 8192
"""The CPU's micro-batch budget (the miniature's), unless less fits."""
CUDA_OVERHEAD_BYTES = 1 << 30
"""Dry-run estimate of the CUDA memory outside torch's allocator (context, cuBLAS and NCCL workspaces); a
real run measures it."""
KEPT_MIN_MICRO_BATCH_TOKENS = 16384
"""On CUDA, the sampler stays allocated between rollouts when the update still gets micro-batches of this many
tokens next to it: large enough that the update's matmuls are compute-bound, so the smaller budget costs
less than capturing the decode graphs again every rollout (a choice, not yet measured on a GPU)."""
BUDGET_STEP = 256
"""Micro-batch budgets above this are rounded down to a multiple of it."""
SAMPLING_BYTES_PER_LOGIT = {False: 12, True: 45}
"""Decode workspace per (sequence, vocabulary) entry: float32 logits, their scaling and log-softmax (12);
with top-k/top-p also the sorted copy, its int64 order, probabilities, their cumulative sum and masks (45)."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model the plan needs, read from a model (real or on the meta device)."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_parameters: int
    layer_parameters: int
    """Parameters of one decoder layer."""
    layer_linear_parameters: int
    """Weights and biases of one decoder layer's ``nn.Linear`` modules (what autocast casts)."""
    largest_parameter: int
    """Elements of the largest parameter tensor."""

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "ModelShape":
        """The shape of a Hugging Face causal LM (``model.model.layers``), counting tied parameters once."""
        config = model.config
        parameters = list(model.parameters())
        layer = model.model.layers[0]
        linear = sum(p.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
        num_heads = config.num_attention_heads
        return cls(
            model_type=config.model_type, num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
            num_heads=num_heads, num_kv_heads=config.num_key_value_heads or num_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // num_heads,
            intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
            num_parameters=sum(p.numel() for p in parameters),
            layer_parameters=sum(p.numel() for p in layer.parameters()), layer_linear_parameters=linear,
            largest_parameter=max(p.numel() for p in parameters),
        )

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """The shape of the model a Hugging Face config describes, built on the meta device (no memory, no weights)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return cls.from_model(AutoModelForCausalLM.from_config(config))


@dataclass(frozen=True)
class PlanSettings:
    """What the plan depends on besides the model; ``for_run`` derives it from a ``TrainConfig``."""

    device_type: str
    device_bytes: int
    memory_utilization: float
    overhead_bytes: int
    compute_dtype: torch.dtype
    lm_head_dtype: torch.dtype
    gradient_checkpointing: bool
    packed_forward: bool
    flash_attention: bool
    """Packed micro-batches run flash-attn's varlen kernel (no attention mask)."""
    reference_model: bool
    rollout_sequences: int
    """Sequences one rank samples per rollout (its prompts times group size)."""
    rollout_sequence_tokens: int
    """Longest rollout sequence: max prompt + max new tokens."""
    eval_sequences: int
    eval_sequence_tokens: int
    mini_batch_rows: int
    micro_batch_tokens: int | None
    """The budget asked for (``--micro-batch-tokens``), or None: the plan picks it."""
    truncated_sampling: bool
    world_size: int = 1
    sharded: bool = False
    sampler_max_num_seqs: int = sampler_engine.DEFAULT_MAX_NUM_SEQS
    sampler_max_batched_tokens: int = sampler_engine.DEFAULT_MAX_NUM_BATCHED_TOKENS

    @classmethod
    def for_run(cls, config, *, device_type: str, device_bytes: int, overhead_bytes: int, world_size: int = 1,
                sharded: bool = False) -> "PlanSettings":
        """The settings of a run of ``config`` (a ``TrainConfig``) on ``world_size`` ranks of ``device_type``,
        with the defaults the loop applies there (bf16, checkpointing and packing on CUDA)."""
        from effreason.train.methods import METHODS

        on_cuda = device_type == "cuda"
        compute_dtype = pick_dtype(config.dtype, torch.device(device_type))
        packed = on_cuda if config.packed_forward is None else config.packed_forward
        rollout_prompts = config.prompts_per_step // world_size
        return cls(
            device_type=device_type, device_bytes=device_bytes, memory_utilization=config.gpu_memory_utilization,
            overhead_bytes=overhead_bytes, compute_dtype=compute_dtype,
            lm_head_dtype=torch.float32 if config.fp32_lm_head else compute_dtype,
            gradient_checkpointing=on_cuda if config.gradient_checkpointing is None else config.gradient_checkpointing,
            packed_forward=packed, flash_attention=packed and on_cuda and flash_attn_installed(),
            reference_model=METHODS[config.method].keeps_reference(config),
            rollout_sequences=rollout_prompts * config.group_size,
            rollout_sequence_tokens=config.max_prompt_tokens + config.max_new_tokens,
            eval_sequences=math.ceil(config.eval_problems / world_size),
            eval_sequence_tokens=config.max_prompt_tokens + config.eval_max_new_tokens,
            mini_batch_rows=rollout_prompts * config.group_size // config.mini_batches,
            micro_batch_tokens=config.micro_batch_tokens,
            truncated_sampling=config.top_p < 1.0, world_size=world_size, sharded=sharded,
        )

    @property
    def on_cuda(self) -> bool:
        return self.device_type == "cuda"

    @property
    def autocast_casts(self) -> bool:
        """Autocast casts float32 parameters to the compute dtype (not under FSDP2, which gathers them in it)."""
        return not self.sharded and self.compute_dtype != torch.float32

    @property
    def longest_row(self) -> int:
        """Tokens of the longest update row: prompt + response - 1 (the last token is never an input)."""
        return self.rollout_sequence_tokens - 1


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# ---------------------------------------------------------------------------------------------- arithmetic


def sampler_weight_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """``c P`` while sampling: a compute-dtype copy (one process, c < 4) or FSDP2's gathered parameters; else 0."""
    if settings.sharded or settings.compute_dtype != torch.float32:
        return shape.num_parameters * settings.compute_dtype.itemsize
    return 0


def layer_activation_bytes(shape: ModelShape, settings: PlanSettings, mask_width: int) -> int:
    """``A``: bytes one decoder layer keeps for backward per token (module docstring), the attention mask
    ``mask_width`` wide (0: none)."""
    hidden, heads, c = shape.hidden_size, shape.num_heads, settings.compute_dtype.itemsize
    query, kv = heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    residual = residual_bytes(settings)
    norms = 2 * (4 + residual) * hidden
    inputs = 5 * c * hidden if settings.autocast_casts else 2 * residual * hidden
    attention_kv = query if mask_width else kv  # SDPA repeats the KV heads when it gets a mask
    attention = c * query + 2 * c * attention_kv + c * query + 4 * heads
    mlp = 4 * c * shape.intermediate_size
    return norms + inputs + attention + mlp + c * mask_width


def residual_bytes(settings: PlanSettings) -> int:
    """``r``: float32 residual stream from float32 parameters; the compute dtype under FSDP2."""
    return settings.compute_dtype.itemsize if settings.sharded else 4


def mask_width(settings: PlanSettings, tokens: int) -> int:
    """``W``: 0 with flash-attn varlen, T for a packed SDPA micro-batch, else the padded row width."""
    if settings.packed_forward:
        return 0 if settings.flash_attention else tokens
    return min(tokens, settings.longest_row)


def activation_bytes_per_token(shape: ModelShape, settings: PlanSettings, tokens: int) -> int:
    """Update bytes per token of a ``tokens``-token micro-batch: layers, backward peak, LM head and mask."""
    hidden, residual = shape.hidden_size, residual_bytes(settings)
    width = mask_width(settings, tokens)
    layer = layer_activation_bytes(shape, settings, width)
    backward = residual * hidden + settings.compute_dtype.itemsize * shape.intermediate_size
    head_bytes = settings.lm_head_dtype.itemsize
    gradient_bytes = head_bytes if settings.on_cuda else torch.promote_types(settings.lm_head_dtype, torch.float32).itemsize
    head = (4 + residual + head_bytes + gradient_bytes) * hidden
    if settings.gradient_checkpointing:
        layers = shape.num_layers * residual * hidden + layer
    else:
        layers = shape.num_layers * layer
    return layers + backward + head + width


def update_fixed_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """Update buffers that do not grow with the micro-batch: autocast's weight casts, the LM head's cast, its
    float32 gradient accumulator and logits chunk, FSDP2's gathered root and two gathered layers."""
    c = settings.compute_dtype.itemsize
    head_weight = shape.vocab_size * shape.hidden_size
    parameter_bytes = c if settings.sharded else 4
    fixed = 4 * head_weight + logits_chunk_bytes(shape, settings)
    if settings.lm_head_dtype.itemsize != parameter_bytes:
        fixed += settings.lm_head_dtype.itemsize * head_weight
    if settings.autocast_casts:
        fixed += c * shape.num_layers * shape.layer_linear_parameters
    if settings.sharded:
        root = shape.num_parameters - shape.num_layers * shape.layer_parameters
        fixed += c * (root + 2 * shape.layer_parameters) + 4 * shape.layer_parameters
    return fixed


def logits_chunk_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """The fused LM-head ops' (C, V) logits scratch: ``GPU_SCRATCH_BYTES`` on CUDA, else ``SCRATCH_ELEMENTS``
    float32 elements (at most 1024 rows)."""
    if settings.on_cuda:
        return GPU_SCRATCH_BYTES
    return chunked.default_chunk_tokens(shape.vocab_size) * shape.vocab_size * 4


def sampler_workspace_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """Transients of the sampler: one layer of a full prefill, ``max_batched_tokens * c_s * (3H + 2Q + 2K + 3I)``,
    and the decode step's logits of ``max_num_seqs`` sequences (``SAMPLING_BYTES_PER_LOGIT``)."""
    c = settings.compute_dtype.itemsize
    query, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    prefill = settings.sampler_max_batched_tokens * c * (3 * shape.hidden_size + 2 * query + 2 * kv
                                                         + 3 * shape.intermediate_size)
    decode = settings.sampler_max_num_seqs * shape.vocab_size * SAMPLING_BYTES_PER_LOGIT[settings.truncated_sampling]
    return prefill + decode


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank of each part of a run, the sizes the run uses and whether it fits (module docstring).

    Every peak counts the overhead and is compared with ``limit_bytes = gpu_memory_utilization * device``.
    """

    shape: ModelShape
    settings: PlanSettings
    limit_bytes: int
    master_weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    reference_bytes: int
    sampler_weight_bytes: int
    sampler_workspace_bytes: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    """KV-cache capacity the run allocates: what fits, at most what the largest sampling phase uses (CPU: at
    most the sampler's CPU default)."""
    rollout_peak_bytes: int
    fitting_micro_batch_tokens: int
    """The largest micro-batch budget whose update fits (0: none)."""
    micro_batch_tokens: int
    """The budget the run uses: the one asked for, else on CUDA the fitting one, on the CPU at most 8192."""
    activation_bytes_per_token: int
    """At ``micro_batch_tokens``."""
    update_peak_bytes: int
    """At ``max(micro_batch_tokens, longest row)``, or the optimizer step's peak if higher."""
    kept_peak_bytes: int
    """The update's peak with the sampler's weights and KV cache still allocated."""
    sampler_resident: bool
    """``kept_peak_bytes`` fits: the sampler's weights and KV cache stay allocated between rollouts."""
    fits: bool
    reason: str

    @property
    def sequences_at_full_length(self) -> int:
        """Rollout sequences of the longest prompt + response the KV cache holds at once."""
        return self.kv_cache_tokens // self.settings.rollout_sequence_tokens

    @property
    def update_tokens(self) -> int:
        """Tokens of the largest micro-batch: the budget, or one longest row when that is longer."""
        return max(self.micro_batch_tokens, self.settings.longest_row)

    def summary(self) -> str:
        """One line for the training log."""
        return (f"memory plan: {'fits' if self.fits else 'does not fit'}: rollout peak {_gib(self.rollout_peak_bytes)} "
                f"with a {self.kv_cache_tokens:,}-token KV cache, update peak {_gib(self.update_peak_bytes)} at "
                f"{self.micro_batch_tokens:,} tokens per micro-batch, limit {_gib(self.limit_bytes)}; "
                f"{self._between_phases()}")

    def _between_phases(self) -> str:
        if self.sampler_resident:
            return "sampler weights and KV cache kept between rollouts"
        return "sampler weights and KV cache freed before each update"

    def table(self) -> str:
        """The dry run's report: the parts, both phases and the verdict."""
        settings, shape = self.settings, self.shape
        compute = _dtype_name(settings.compute_dtype)
        processes = f"{settings.world_size} process{'es' if settings.world_size > 1 else ''}"
        processes += ", FSDP2" if settings.sharded else ""
        header = (f"model: {shape.model_type}, {_count(shape.num_parameters)} parameters, {shape.num_layers} layers; "
                  f"{processes} on {settings.device_type}, compute {compute}")
        device = (f"limit: {_gib(settings.device_bytes)} x {settings.memory_utilization:g} = {_gib(self.limit_bytes)} "
                  f"per rank, {_gib(settings.overhead_bytes)} of it outside torch")
        rows = [
            ("master weights (float32)", _gib(self.master_weight_bytes), "both phases"),
            ("AdamW state (2 x float32)", _gib(self.optimizer_bytes), "both phases"),
            ("gradients (float32)", _gib(self.gradient_bytes), "update"),
            ("reference model", _gib(self.reference_bytes), "both phases" if self.reference_bytes else "none"),
            (f"sampler weights ({compute})", _gib(self.sampler_weight_bytes),
             ("both phases" if self.sampler_resident else "rollout") if self.sampler_weight_bytes
             else "none: reads the master weights"),
            ("sampler workspace", _gib(self.sampler_workspace_bytes), "rollout"),
            ("KV cache per token", _kib(self.kv_bytes_per_token),
             f"{self.kv_cache_tokens:,} tokens = {_gib(self.kv_cache_tokens * self.kv_bytes_per_token)}"),
            ("activations per micro-batch token", _kib(self.activation_bytes_per_token), self._activation_note()),
            ("micro-batch budget", f"{self.micro_batch_tokens:,} tok",
             f"largest that fits: {self.fitting_micro_batch_tokens:,}"),
            ("rollout peak", _gib(self.rollout_peak_bytes), f"{self.sequences_at_full_length:,} sequences of "
             f"{settings.rollout_sequence_tokens:,} tokens at once (a rollout has {settings.rollout_sequences:,})"),
            ("update peak", _gib(self.update_peak_bytes), f"a micro-batch of {self.update_tokens:,} tokens"),
            ("update peak, sampler kept", _gib(self.kept_peak_bytes), self._between_phases()),
        ]
        width = max(len(name) for name, _, _ in rows)
        lines = [header, device] + [f"  {name:<{width}}  {value:>12}  {note}" for name, value, note in rows]
        lines.append(f"verdict: {'fits' if self.fits else 'does not fit'}: {self.reason}")
        return "\n".join(lines)

    def _activation_note(self) -> str:
        settings = self.settings
        recompute = "checkpointing" if settings.gradient_checkpointing else "no checkpointing"
        if not settings.packed_forward:
            attention = "padded, SDPA with a mask"
        elif settings.flash_attention:
            attention = "packed, flash-attn varlen"
        else:
            attention = "packed, SDPA with a (T, T) mask: install flash-attn"
        return f"{recompute}; {attention}"


def plan_memory(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``shape`` trained with ``settings`` (formulas in the module docstring)."""
    shards = settings.world_size if settings.sharded else 1
    parameters = shape.num_parameters
    limit = int(settings.device_bytes * settings.memory_utilization)
    master, gradients, optimizer = 4 * parameters // shards, 4 * parameters // shards, 8 * parameters // shards
    reference = settings.compute_dtype.itemsize * parameters if settings.reference_model else 0
    resident = master + optimizer + reference + settings.overhead_bytes
    weights, workspace = sampler_weight_bytes(shape, settings), sampler_workspace_bytes(shape, settings)
    token_bytes = kv_cache.bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim, settings.compute_dtype)
    kv_tokens = _kv_cache_tokens(settings, limit - resident - weights - workspace, token_bytes)
    rollout_peak = resident + weights + workspace + kv_tokens * token_bytes

    update_base = resident + gradients + update_fixed_bytes(shape, settings)
    step_peak = resident + gradients + 4 * (parameters // shards if settings.on_cuda else shape.largest_parameter)

    def update_peak(tokens: int) -> int:
        return max(update_base + tokens * activation_bytes_per_token(shape, settings, tokens), step_peak)

    def kept_peak(tokens: int) -> int:
        return update_peak(tokens) + weights + kv_tokens * token_bytes

    cap = max(settings.mini_batch_rows, 1) * settings.longest_row
    fitting = _largest_fitting(update_peak, limit, cap)
    if settings.micro_batch_tokens is not None:
        budget = settings.micro_batch_tokens
    elif settings.on_cuda:
        budget = _cuda_budget(fitting, _largest_fitting(kept_peak, limit, cap), settings.longest_row)
    else:
        budget = min(CPU_MICRO_BATCH_TOKENS, fitting) or settings.longest_row
    update_tokens = max(budget, settings.longest_row)
    kept = kept_peak(update_tokens)
    plan = MemoryPlan(
        shape=shape, settings=settings, limit_bytes=limit, master_weight_bytes=master, gradient_bytes=gradients,
        optimizer_bytes=optimizer, reference_bytes=reference, sampler_weight_bytes=weights,
        sampler_workspace_bytes=workspace, kv_bytes_per_token=token_bytes, kv_cache_tokens=kv_tokens,
        rollout_peak_bytes=rollout_peak, fitting_micro_batch_tokens=fitting, micro_batch_tokens=budget,
        activation_bytes_per_token=activation_bytes_per_token(shape, settings, budget),
        update_peak_bytes=update_peak(update_tokens), kept_peak_bytes=kept, sampler_resident=kept <= limit,
        fits=True, reason="",
    )
    fits, reason = _verdict(plan, resident + gradients)
    return dataclasses.replace(plan, fits=fits, reason=reason)


def _cuda_budget(fitting: int, fitting_kept: int, longest_row: int) -> int:
    """The micro-batch budget on CUDA when none is asked for. ``fitting``: the largest that fits alone;
    ``fitting_kept``: the largest that fits next to the kept sampler (0: none). The kept budget wins when it
    reaches ``min(fitting, max(longest_row, KEPT_MIN_MICRO_BATCH_TOKENS))``; else the sampler is freed before
    each update and the budget is ``fitting`` (one longest row when nothing fits)."""
    enough = min(fitting, max(longest_row, KEPT_MIN_MICRO_BATCH_TOKENS))
    if fitting_kept and fitting_kept >= enough:
        return fitting_kept
    return fitting or longest_row


def _kv_cache_tokens(settings: PlanSettings, free_bytes: int, token_bytes: int) -> int:
    """What ``free_bytes`` holds, at most the tokens of the largest sampling phase (on the CPU at most the
    sampler's CPU default)."""
    if settings.on_cuda:
        wanted = max(settings.rollout_sequences * settings.rollout_sequence_tokens,
                     settings.eval_sequences * settings.eval_sequence_tokens)
    else:
        wanted = kv_cache.CPU_DEFAULT_KV_TOKENS
    return max(0, min(wanted, free_bytes // token_bytes))


def _largest_fitting(peak_of, limit: int, cap: int) -> int:
    """The largest ``tokens <= cap`` with ``peak_of(tokens) <= limit`` (peak_of increasing), rounded down to a
    multiple of ``BUDGET_STEP`` above it; 0 when not even one token fits."""
    if peak_of(1) > limit:
        return 0
    low, high = 1, cap
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if peak_of(middle) <= limit else (low, middle - 1)
    return low - low % BUDGET_STEP if low >= BUDGET_STEP else low


def _verdict(plan: MemoryPlan, training_state: int) -> tuple[bool, str]:
    """``(fits, reason)``: the training state, one longest sequence in the KV cache, one in a micro-batch."""
    settings, limit = plan.settings, plan.limit_bytes
    longest = max(settings.rollout_sequence_tokens, settings.eval_sequence_tokens if settings.eval_sequences else 0)
    if training_state > limit:
        return False, f"the training state alone takes {_gib(training_state)} of {_gib(limit)}"
    if plan.kv_cache_tokens < longest:
        return False, (f"the KV cache has room for {plan.kv_cache_tokens:,} tokens, fewer than one sequence of "
                       f"{longest:,} (prompt + response)")
    if plan.update_peak_bytes > limit:
        what = "a single sequence" if plan.update_tokens == settings.longest_row else "a micro-batch"
        return False, (f"{what} of {plan.update_tokens:,} tokens takes the update to {_gib(plan.update_peak_bytes)}, "
                       f"more than {_gib(limit)}")
    return True, (f"rollout peak {_gib(plan.rollout_peak_bytes)}, update peak {_gib(plan.update_peak_bytes)}, "
                  f"limit {_gib(limit)}")


def _count(number: int) -> str:
    return f"{number / 1e9:.2f}B" if number >= 1e9 else f"{number / 1e6:.2f}M"


def _gib(num_bytes: int) -> str:
    """GiB, or MiB below a tenth of one."""
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB // 10 else f"{num_bytes / (1 << 20):.1f} MiB"


def _kib(num_bytes: int) -> str:
    return f"{num_bytes / 1024:.1f} KiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------- runs and the dry run


def device_memory_bytes(config, device: torch.device) -> int:
    """``--device-memory`` GiB, else the CUDA device's total memory, else the machine's RAM."""
    if config.device_memory is not None:
        return int(config.device_memory * GIB)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measured_overhead_bytes(device: torch.device) -> int:
    """CUDA memory in use outside torch's allocator: ``total - free - reserved``; 0 on the CPU."""
    if device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    return max(0, total - free - torch.cuda.memory_reserved(device))


def plan_for_run(config, model: torch.nn.Module, device: torch.device, *, world_size: int, sharded: bool) -> MemoryPlan:
    """The plan of a starting run: ``model`` loaded (its float32 master weights), the overhead measured."""
    settings = PlanSettings.for_run(config, device_type=device.type, device_bytes=device_memory_bytes(config, device),
                                    overhead_bytes=measured_overhead_bytes(device), world_size=world_size, sharded=sharded)
    return plan_memory(ModelShape.from_model(model), settings)


def planned_device(config) -> torch.device:
    """The device a dry run plans for: ``--device``; with ``auto`` CUDA when present or when ``--device-memory``
    is given (planning for a GPU from a machine without one), else the CPU."""
    if config.device != "auto":
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() or config.device_memory is not None else "cpu")


def plan_for_config(config) -> MemoryPlan:
    """The dry run's plan: the model's ``config.json`` built on the meta device, ``WORLD_SIZE`` ranks (as under
    the torchrun command that will run it), the CUDA overhead estimated (``CUDA_OVERHEAD_BYTES``)."""
    from effreason.models import load_model_config
    from effreason.train.distributed import shards_parameters
    from effreason.warmstart import warmstart_dir

    device = planned_device(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda" and config.device_memory is None and not torch.cuda.is_available():
        raise ValueError("device_memory: torch sees no CUDA device here; give --device-memory GiB to plan for one")
    shape = ModelShape.from_config(load_model_config(config.model or warmstart_dir()))
    settings = PlanSettings.for_run(
        config, device_type=device.type, device_bytes=device_memory_bytes(config, device),
        overhead_bytes=CUDA_OVERHEAD_BYTES if device.type == "cuda" else 0, world_size=world_size,
        sharded=world_size > 1 and shards_parameters(config.data_parallel, device.type),
    )
    return plan_memory(shape, settings)


def dry_run(config) -> int:
    """Print the plan of ``config`` (rank 0 only under torchrun); 0 when the run fits, else 1."""
    plan = plan_for_config(config)
    if os.environ.get("RANK", "0") == "0":
        print(plan.table())
    return 0 if plan.fits else 1
