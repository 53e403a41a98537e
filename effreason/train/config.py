"""``TrainConfig``: every setting of ``python -m effreason.train``, validated on construction.

The command-line flags are generated from the fields (``--group-size`` for ``group_size``,
help text from the field metadata), so the dataclass and the CLI never drift apart. The
options of the registered rewards (``effreason.rewards``: ``alpha``, ``kimi_weight``, ...) are
fields too, generated from the registry (``RewardOptions``, the base class). Settings resolve in
order: the miniature defaults, a ``--preset`` (``paper-1.5b``, ``paper-7b``: the paper's
hyperparameters, ``../shared/PAPER.md``), a ``--recipe`` (``effreason.recipes``: a published method's
reward and options), then the flags given explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from effreason.advantages import ADVANTAGE_ESTIMATORS
from effreason.data import SPEC_HELP
from effreason.data.scoring import DEFAULT_ANSWER_KIND
from effreason.grading import ANSWER_KINDS
from effreason.train.distributed import DATA_PARALLEL
from effreason.train.methods import METHODS
from effreason.losses import KL_ESTIMATORS, LOSS_AGGREGATIONS
from effreason.rewards import REWARDS, RewardOption, reward_options, rewards_using
from effreason.recipes import RECIPES
from effreason.train.group_filters import GROUP_FILTERS

METHOD_NAMES = tuple(METHODS)
DPO_DEFAULT_LR = 3e-5
"""DPO's learning rate when ``--lr`` is not given: the RL default (1e-4) collapses DPO's accuracy on the miniature."""
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ROLLOUT_BACKENDS = ("auto", "sampler", "hf")
OLD_LOGPROB_SOURCES = ("auto", "trainer", "sampler")


def _option(default, help_text: str, *, choices=None, flag: bool = True):
    """A dataclass field carrying its CLI help text and choices."""
    return field(default=default, metadata={"help": help_text, "choices": choices, "flag": flag})


def _reward_option_field(option: RewardOption) -> tuple:
    """``(name, type, field)`` of a reward option, its help text led by the rewards that read it."""
    help_text = f"{', '.join(rewards_using(option.name))}: {option.help}"
    return option.name, type(option.default), _option(option.default, help_text)


def _reward_help() -> str:
    """Help of ``--reward``: every registered reward with its source."""
    return "sequence reward: " + "; ".join(f"{reward.name} ({reward.source})" for reward in REWARDS.values())


def _recipe_help() -> str:
    """Help of ``--recipe``: every registered recipe with its source."""
    return ("start from a published method's reward and training options, before the flags given (which win): "
            + "; ".join(f"{recipe.name} ({recipe.source})" for recipe in RECIPES.values()))


def parse_token_limit_schedule(text: str) -> tuple[tuple[int, float], ...]:
    """``"0:1,14:0.75,28:0.5"`` -> ``((0, 1.0), (14, 0.75), (28, 0.5))``: rounds as (first step, fraction of
    ``--max-new-tokens``); ValueError naming ``token_limit_schedule`` unless the steps rise from 0 and the
    fractions lie in (0, 1]."""
    try:
        rounds = tuple((int(step), float(fraction)) for step, fraction in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise ValueError(f"token_limit_schedule must be comma-separated STEP:FRACTION pairs, got {text!r}") from None
    steps = [step for step, _ in rounds]
    if steps[0] != 0 or steps != sorted(set(steps)) or not all(0 < fraction <= 1 for _, fraction in rounds):
        raise ValueError(f"token_limit_schedule: steps must rise from 0 and fractions lie in (0, 1], got {text!r}")
    return rounds


RewardOptions = dataclasses.make_dataclass("RewardOptions", [_reward_option_field(option) for option in reward_options()])
"""One field per option of the registered rewards (``alpha``, ``kimi_weight``, ``l1_beta``, ...), default its paper's."""


@dataclass
class TrainConfig(RewardOptions):
    """One training run. Defaults are the built-in miniature (toy task, shipped warm start, CPU)."""

    preset: str | None = _option(None, "start from a named preset (paper-1.5b, paper-7b) before applying other flags", choices=None)
    model: str | None = _option(None, "HF checkpoint folder (Qwen2/Llama); default: the built-in warm start")
    data: str | None = _option(None, f"training problems: {SPEC_HELP}; default: toy")
    eval_data: str | None = _option(None, "held-out problems for the before/after evaluation, a dataset spec as --data; default: the test split of a generated --data, or the last --eval-problems rows of a file")
    answer_kind: str = _option(DEFAULT_ANSWER_KIND, "how answers are extracted from responses of --data files (the same grading as python -m effreason.eval)", choices=ANSWER_KINDS)
    method: str = _option("rl", "rl: the paper's length-penalised RL (and the other rewards); rs-sft: rejection-sampling SFT on the shortest correct of k samples; dpo: DPO, shortest correct chosen over longest correct", choices=METHOD_NAMES)
    out: str | None = _option(None, "run folder; default runs/train-<timestamp>")
    resume: str | None = _option(None, "resume the run in this folder from its last checkpoint (its saved config is used)")
    seed: int = _option(0, "seed of data order, sampling and initialisation; fixed seed + CPU = deterministic")

    reward: str = _option("paper", _reward_help(), choices=tuple(REWARDS))
    advantage: str = _option("rloo", "advantage estimator", choices=tuple(ADVANTAGE_ESTIMATORS))
    target_token_ratio: float | None = _option(None, "adjust alpha online so the mean response length approaches this fraction of the warm start's (e.g. 0.6)")
    length_budget: int | None = _option(None, "token budget of the budgeted rewards (l1-exact/l1-max n_gold, dapo-overlong L_max, truncation L, alp N, laser's scale); default the step's rollout token limit")
    recipe: str | None = _option(None, _recipe_help(), choices=tuple(RECIPES))
    group_filter: str = _option("none", "which graded samples the update trains on: dynamic-sampling drops groups of equal rewards and refills the step (DAPO, DLER); gfpo-shortest / gfpo-token-efficiency keep --gfpo-keep of each group's --group-size samples (GFPO)", choices=tuple(GROUP_FILTERS))
    gfpo_keep: int = _option(8, "gfpo-*: samples kept per prompt (k), out of --group-size (G')")
    dynamic_sampling_rounds: int = _option(3, "dynamic-sampling: at most this many extra rounds of --prompts-per-step fresh prompts per step to refill dropped groups")
    token_limit_schedule: str | None = _option(None, "a rollout token limit tightened over rounds (ThinkPrune): STEP:FRACTION pairs, from STEP on rollouts stop at FRACTION * --max-new-tokens tokens (and the budget follows), e.g. 0:1,14:0.75,28:0.5")
    rollout_token_budget: int | None = _option(None, "stop once this many response tokens have been sampled (all ranks, refills included), or after --steps; the family sweep gives every recipe the same budget")

    dpo_beta: float = _option(0.1, "dpo: beta of the DPO loss (Rafailov et al. 2023)")
    baseline_epochs: int = _option(1, "rs-sft, dpo: passes over each step's selected samples")

    group_size: int = _option(8, "samples per prompt (k)")
    prompts_per_step: int = _option(16, "prompts per rollout step (all ranks together)")
    mini_batches: int = _option(1, "optimizer steps per rollout step (the rollout is split into this many mini-batches)")
    steps: int = _option(40, "rollout steps (at most, with --rollout-token-budget)")
    lr: float = _option(1e-4, "peak learning rate (AdamW)")
    warmup_ratio: float = _option(0.03, "fraction of optimizer steps with linear warmup, then constant")
    adam_beta1: float = _option(0.9, "AdamW beta1")
    adam_beta2: float = _option(0.95, "AdamW beta2")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    grad_clip: float = _option(1.0, "max global gradient norm (0 = off)")

    max_new_tokens: int = _option(256, "max response tokens during training rollouts")
    max_prompt_tokens: int = _option(512, "prompts longer than this are an error")
    temperature: float = _option(1.0, "sampling temperature of rollouts (the loss uses the same temperature)")
    top_p: float = _option(1.0, "nucleus sampling of rollouts")
    clip_eps_low: float = _option(0.2, "PPO clip range below 1")
    clip_eps_high: float = _option(0.2, "PPO clip range above 1")
    loss_agg: str = _option("seq-mean-token-mean", "loss aggregation (the paper's: seq-mean-token-mean)", choices=LOSS_AGGREGATIONS)
    kl_coef: float = _option(0.0, "KL coefficient to a frozen reference copy (made only when > 0)")
    kl_estimator: str = _option("k3", "KL estimator", choices=KL_ESTIMATORS)
    kl_in_reward: bool = _option(False, "subtract the KL from the per-token reward (the paper's) instead of adding it to the loss")
    tis_cap: float = _option(0.0, "truncated importance-sampling correction for sampler/trainer mismatch: cap C of the per-sequence weight (0 = off)")
    old_logprobs: str = _option("auto", "pi_old of the PPO ratio and of the KL reward: 'trainer' = the trainer's own log-probs before the step, in the compute dtype (ratio 1 when the step is one mini-batch without --tis-cap or --kl-in-reward, else one no-grad forward over the rollout); 'sampler' = the sampler's (free, but a sampler computing in bf16 differs from the trainer's autocast and the clip then masks the difference); auto = trainer when --dtype is not float32", choices=OLD_LOGPROB_SOURCES)
    rollout_backend: str = _option("auto", "rollout engine: the paged sampler (auto, sampler) or HF generate() (hf, slower; a cross-check)", choices=ROLLOUT_BACKENDS)
    micro_batch_tokens: int | None = _option(None, "token budget of one micro-batch (rows x longest row); default: the largest that fits the device's memory on CUDA (see --dry-run), 8192 on the CPU")

    eval_problems: int = _option(504, "held-out problems of the before/after evaluation (0 = skip)")
    eval_max_new_tokens: int = _option(320, "max response tokens during evaluation")
    eval_temperature: float = _option(0.0, "evaluation temperature (0 = greedy)")
    eval_batch_size: int = _option(128, "prompts per evaluation batch")
    checkpoint_every: int = _option(10, "save a checkpoint every N rollout steps (and at the end)")
    max_bad_steps: int = _option(3, "consecutive non-finite losses before the run aborts")
    cpu_threads: int = _option(0, "torch CPU threads per process; 0 = auto (1 for models under 20M parameters, where threading overhead dominates; else torch's default)")
    device: str = _option("auto", "device", choices=DEVICES)
    data_parallel: str = _option("auto", "under torchrun: ddp (replicated), fsdp2 (sharded), or auto (fsdp2 on CUDA, ddp on the CPU)", choices=DATA_PARALLEL)
    dtype: str = _option("auto", "compute dtype of the forward and backward passes (auto: bfloat16 on CUDA, float32 on CPU); parameters, gradients and AdamW state stay float32 (master weights), model/ is exported in this dtype", choices=DTYPES)
    packed_forward: bool | None = _option(None, "training forward padding-free: a micro-batch's sequences in one row, positions restarting per sequence (flash-attn varlen when installed, else SDPA with a block-causal mask); default: on with CUDA, off on the CPU")
    gradient_checkpointing: bool | None = _option(None, "recompute each decoder layer's activations in backward instead of keeping them (default: on with CUDA, off on the CPU)")
    fp32_lm_head: bool = _option(False, "compute the LM head of the loss in float32 whatever --dtype (ScaleRL, MiniMax-M1: steadier RL)")
    gpu_memory_utilization: float = _option(0.9, "fraction of the device's memory the run may use (as vLLM's): the KV cache and the micro-batch budget are sized to stay under it")
    device_memory: float | None = _option(None, "GiB of device memory to plan for instead of the device's own (with --dry-run and no GPU here: plan for a GPU of this size)")
    dry_run: bool = _option(False, "print the memory plan (weights, optimizer state, activations per token, KV-cache tokens, micro-batch budget) and whether the run fits, then exit; loads no weights")
    quiet: bool = _option(False, "logs only, no progress bar")

    def __post_init__(self):
        for option in reward_options():
            option.check(option.name, getattr(self, option.name))
        for name in ("group_size", "prompts_per_step", "mini_batches", "steps", "max_new_tokens", "max_prompt_tokens",
                     "eval_max_new_tokens", "eval_batch_size", "checkpoint_every", "max_bad_steps",
                     "baseline_epochs"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("eval_problems", self.eval_problems, minimum=0)
        _require_int("cpu_threads", self.cpu_threads, minimum=0)
        _require_int("seed", self.seed, minimum=0)
        if self.advantage in ("rloo", "grpo") and self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for the {self.advantage} advantage, got {self.group_size}")
        if self.prompts_per_step % self.mini_batches:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be divisible by mini_batches ({self.mini_batches})")
        for name in ("lr", "temperature", "dpo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        _require_in_unit("warmup_ratio", self.warmup_ratio)
        _require_in_unit("adam_beta1", self.adam_beta1)
        _require_in_unit("adam_beta2", self.adam_beta2)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.clip_eps_low < 1 or self.clip_eps_high < 0:
            raise ValueError(f"clip_eps_low must be in [0, 1) and clip_eps_high >= 0, got {self.clip_eps_low}, {self.clip_eps_high}")
        for name in ("weight_decay", "grad_clip", "kl_coef", "tis_cap", "eval_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tis_cap and self.tis_cap < 1:
            raise ValueError(f"tis_cap must be 0 (off) or >= 1, got {self.tis_cap}")
        if self.target_token_ratio is not None and not 0 < self.target_token_ratio <= 2:
            raise ValueError(f"target_token_ratio must be in (0, 2], got {self.target_token_ratio}")
        if self.target_token_ratio is not None and self.reward not in rewards_using("alpha"):
            raise ValueError(f"target_token_ratio controls alpha: use it with a reward that has alpha ({', '.join(rewards_using('alpha'))})")
        for name in ("length_budget", "micro_batch_tokens"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.device_memory is not None and not self.device_memory > 0:
            raise ValueError(f"device_memory must be > 0 GiB, got {self.device_memory}")
        self._check_recipe_options()
        for name in ("method", "reward", "advantage", "loss_agg", "kl_estimator", "device", "dtype", "answer_kind", "rollout_backend",
                     "data_parallel", "group_filter", "old_logprobs"):
            choices = _field_choices(name)
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        if self.preset is not None and self.model is None:
            raise ValueError(f"preset {self.preset} needs --model DIR (e.g. a local DeepSeek-R1-Distill-Qwen checkpoint)")

    def _check_recipe_options(self) -> None:
        """The settings recipes use: recipe name, group filter, ThinkPrune's schedule, the token budget."""
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {self.recipe!r}")
        if self.method != "rl" and (self.recipe is not None or self.group_filter != "none"):
            raise ValueError(f"recipe and group_filter shape the rl method's update, not {self.method}'s")
        _require_int("gfpo_keep", self.gfpo_keep, minimum=1)
        _require_int("dynamic_sampling_rounds", self.dynamic_sampling_rounds, minimum=0)
        if not GROUP_FILTERS.get(self.group_filter, GROUP_FILTERS["none"]).whole_groups:
            minimum = 2 if self.advantage in ("rloo", "grpo") else 1
            if not minimum <= self.gfpo_keep < self.group_size:
                raise ValueError(f"gfpo_keep must be in [{minimum}, group_size={self.group_size}) for {self.group_filter} "
                                 f"with the {self.advantage} advantage, got {self.gfpo_keep}")
        if self.token_limit_schedule is not None:
            parse_token_limit_schedule(self.token_limit_schedule)
        if self.rollout_token_budget is not None:
            _require_int("rollout_token_budget", self.rollout_token_budget, minimum=1)

    @property
    def clip_eps(self) -> tuple[float, float]:
        return (self.clip_eps_low, self.clip_eps_high)

    def max_tokens_at(self, step: int) -> int:
        """The rollout token limit at ``step`` (0-based): ``--max-new-tokens``, scaled by the schedule's round."""
        if self.token_limit_schedule is None:
            return self.max_new_tokens
        fraction = [fraction for first, fraction in parse_token_limit_schedule(self.token_limit_schedule) if first <= step][-1]
        return max(1, int(fraction * self.max_new_tokens))

    def budget_at(self, step: int) -> int:
        """The length budget of the budgeted rewards at ``step``: ``--length-budget``, else the step's rollout limit."""
        return self.length_budget or self.max_tokens_at(step)

    @property
    def budget(self) -> int:
        """The length budget of the budgeted rewards at the first step."""
        return self.budget_at(0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: Path) -> "TrainConfig":
        with open(path) as handle:
            return cls(**json.load(handle))


def _require_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _require_in_unit(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _field_choices(name: str) -> tuple:
    return next(f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if f.name == name)


_PAPER_COMMON = dict(
    group_size=8,
    prompts_per_step=32,
    mini_batches=2,  # 256 responses per rollout, train batch 128
    steps=100,
    warmup_ratio=0.03,
    adam_beta1=0.9,
    adam_beta2=0.95,
    grad_clip=1.0,
    temperature=1.0,
    top_p=1.0,
    max_prompt_tokens=512,
    max_new_tokens=32000,
    loss_agg="seq-mean-token-mean",
    kl_coef=0.001,
    kl_estimator="k1",
    kl_in_reward=True,
    eval_temperature=0.6,
    eval_max_new_tokens=32768,
    eval_batch_size=64,
    dtype="auto",
    device="auto",
)

PRESETS = {
    "paper-1.5b": dict(_PAPER_COMMON, lr=5e-6),
    "paper-7b": dict(_PAPER_COMMON, lr=2e-6),
}
"""The paper's training setups (Arora & Zanette 2025, scripts of the reference code); alpha stays a flag."""


# ------------------------------------------------------------------------------------ CLI


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_type(config_field: dataclasses.Field):
    default = config_field.default
    annotation = str(config_field.type)
    if isinstance(default, bool):
        return None
    if "int" in annotation:
        return int
    if "float" in annotation:
        return float
    return str


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field, kebab-case, with the field's help text and choices."""
    parser = argparse.ArgumentParser(
        prog="python -m effreason.train",
        description="Length-penalised RL (Arora & Zanette 2025): train a reasoning model to answer with fewer tokens.",
        argument_default=argparse.SUPPRESS,
    )
    reward_group = parser.add_argument_group("reward options", "settings of the rewards named before each; --reward picks one")
    reward_fields = {config_field.name for config_field in dataclasses.fields(RewardOptions)}
    for config_field in dataclasses.fields(TrainConfig):
        help_text = f"{config_field.metadata['help']} (default: {config_field.default})"
        group = reward_group if config_field.name in reward_fields else parser
        if config_field.name == "preset":
            group.add_argument(_flag_name("preset"), choices=tuple(PRESETS), help=help_text)
        elif isinstance(config_field.default, bool) or str(config_field.type) == "bool | None":
            group.add_argument(_flag_name(config_field.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(
                _flag_name(config_field.name),
                type=_flag_type(config_field),
                choices=config_field.metadata["choices"],
                help=help_text,
            )
    return parser


def config_from_args(argv=None) -> TrainConfig:
    """Parse flags: miniature defaults, then the preset (if any), then the recipe (if any), then the flags given.

    With ``--resume RUN_DIR`` the run's saved ``config.json`` is the base instead, so a resumed
    run continues with the settings it started with (flags given alongside still override).
    """
    given = vars(build_parser().parse_args(argv))
    return resolve_config(given)


def resolve_config(given: dict) -> TrainConfig:
    """``TrainConfig`` from explicitly given settings (a dict of field name -> value): the defaults, then
    the preset's settings, then the recipe's, then ``given``."""
    if given.get("resume"):
        saved = Path(given["resume"]) / "config.json"
        if not saved.exists():
            raise ValueError(f"resume: {saved} not found (is {given['resume']} a run folder?)")
        with open(saved) as handle:
            base = json.load(handle)
        if given.get("recipe", base.get("recipe")) != base.get("recipe"):
            raise ValueError(f"recipe: a resumed run keeps the recipe it started with ({base.get('recipe')})")
        base.update(given)
        base["out"] = given["resume"]
        return TrainConfig(**base)
    preset = given.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    base = dict(PRESETS[preset]) if preset else {}
    recipe = given.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    if recipe is not None:
        base.update(RECIPES[recipe].settings())
    if given.get("method") == "dpo":
        base.setdefault("lr", DPO_DEFAULT_LR)
    base.update(given)
    return TrainConfig(**base)
