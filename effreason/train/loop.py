"""The one training loop: evaluate, then rollout -> grade -> score -> group filter -> the method's update for
``steps`` steps (or until ``--rollout-token-budget`` response tokens are sampled), evaluate again.

The method (``--method``: the paper's RL, rs-sft or dpo; :mod:`effreason.train.methods`) is the only
part that differs between runs; devices, torchrun (DDP on CPU, FSDP2 on CUDA), the CPU thread
policy, checkpoints and resume, the evaluation and the run folder are this file's, for every method.
Memory follows :mod:`effreason.train.memory_plan`: the micro-batch budget and the sampler's KV cache
are sized from it, the AdamW state exists before the first rollout, and the sampler's KV cache and
weight copy stay allocated between rollouts when they fit next to the update, else a step holds either
the rollout's memory (KV cache, sampler weights) or the update's (gradients, activations), never both.
``run(config) -> Path`` writes the run folder::

    config.json          the resolved TrainConfig (``--resume`` continues with it)
    metrics.jsonl        one line per rollout step
    eval_before.json     held-out evaluation of the starting model
    eval_after.json      ... of the trained model
    summary.json         {"method": ..., "before": {...}, "after": {...}, "time_s": ..., ...} (written last)
    model/               the trained model and tokenizer (Hugging Face format)
    checkpoint/          the latest resumable checkpoint
    training_curves.png, accuracy_vs_tokens.png
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from effreason.models import load_checkpoint, pad_token_id, pick_device, pick_dtype, stop_token_ids
from effreason.rewards import rewards_using
from effreason.tasks.prompting import encode_prompt
from effreason.train import checkpoint as checkpoints
from effreason.train import distributed, memory_plan
from effreason.train.alpha_control import AlphaController
from effreason.train.collect import StepRollout, collect_rollout
from effreason.train.config import TrainConfig
from effreason.train.data import build_task
from effreason.eval.metrics import dataset_metrics
from effreason.train.evaluate import evaluate_policy, format_table
from effreason.train.methods import METHODS
from effreason.train.plots import plot_accuracy_vs_tokens, plot_training_curves
from effreason.train.run_folder import cleanup_if_no_step, default_run_dir
from effreason.train.rollout import Rollout, RolloutEngine, SamplingParams
from effreason.train.scoring import next_reward_state, sequence_rewards

logger = logging.getLogger("effreason.train")


class TrainingAborted(RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


def run(config: TrainConfig) -> Path:
    """Train according to ``config`` and return the run folder (see the module docstring)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    context = distributed.setup(pick_device(config.device), config.data_parallel)
    try:
        return Trainer(config, context).run()
    finally:
        distributed.teardown(context)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (sampling has its own per-step seeds, see ``step_seed``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """State and steps of one run; ``run()`` is the whole job."""

    def __init__(self, config: TrainConfig, context: distributed.DistributedContext):
        self.config = config
        self.context = context
        self.device = context.device
        self.compute_dtype = pick_dtype(config.dtype, self.device)
        self.lm_head_dtype = torch.float32 if config.fp32_lm_head else self.compute_dtype
        self.run_dir = Path(config.out) if config.out else default_run_dir()
        if config.out is None and context.enabled:
            raise ValueError("out: pass --out RUN_DIR under torchrun so every rank writes the same run folder")
        self.log = (lambda message: print(message, file=sys.stderr, flush=True)) if context.is_main else (lambda message: None)

    # ------------------------------------------------------------------ setup

    def run(self) -> Path:
        started = time.perf_counter()
        resume_from = checkpoints.latest_checkpoint(self.run_dir) if self.config.resume else None
        if self.config.resume and resume_from is None:
            raise ValueError(f"resume: no checkpoint in {self.run_dir}")
        with cleanup_if_no_step(self.run_dir, owner=self.context.is_main):
            self._prepare_folder(resuming=resume_from is not None)
            seed_everything(self.config.seed)
            self._build(resume_from)
            before = self._evaluation("before")
            self._train_steps()
            after = self._evaluation("after")
            self._finish(before, after, time.perf_counter() - started)
        self.context.barrier()  # every rank done before any tears the process group down (gloo aborts otherwise)
        return self.run_dir

    def _prepare_folder(self, resuming: bool) -> None:
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resuming:
                (self.run_dir / "config.json").write_text(self.config.to_json())
        self.context.barrier()

    def _build(self, resume_from: Path | None) -> None:
        config = self.config
        # float32 master weights whatever the compute dtype: AdamW steps of 5e-6 would round away in bf16
        self.model, self.tokenizer, _ = load_checkpoint(resume_from or config.model, device=self.device, dtype=torch.float32)
        self.packed_forward = self._on_with_cuda(config.packed_forward)
        prepare_for_training(self.model, gradient_checkpointing=self._on_with_cuda(config.gradient_checkpointing),
                             packed_forward=self.packed_forward)
        _set_cpu_threads(self.model, config.cpu_threads)
        self.plan = memory_plan.plan_for_run(config, self.model, self.device, world_size=self.context.world_size,
                                             sharded=self.context.sharded)
        self.config = config = dataclasses.replace(config, micro_batch_tokens=self.plan.micro_batch_tokens)
        self.log(f"effreason.train: {self.plan.summary()}")
        if not self.plan.fits:
            self.log(f"warning: {self.plan.reason} (python -m effreason.train --dry-run ... shows the plan)")
        self.task = build_task(config)
        self.stop_token_ids = stop_token_ids(self.model, self.tokenizer)
        self.pad_token_id = pad = pad_token_id(self.tokenizer, self.stop_token_ids)
        self.engine = RolloutEngine(self.model, pad_token_id=pad, max_batch_prompts=config.eval_batch_size,
                                    backend=config.rollout_backend,
                                    weights_dtype=None if self.context.sharded else self.compute_dtype,
                                    kv_cache_tokens=max(self.plan.kv_cache_tokens, 1),
                                    release_memory=not self.plan.sampler_resident)
        self.method = METHODS[config.method](self)
        self.trainable = distributed.wrap_policy(self.method.module, self.context, self.compute_dtype)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay,
        )
        initialize_optimizer_state(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_then_constant(config))
        self.state = {"step": 0, "prompts_consumed": 0, "alpha": config.alpha, "skipped_steps": 0,
                      "consecutive_bad": 0, "controller": None, "rollout_tokens": 0, "reward_state": {}}
        if resume_from is not None:
            self._restore(resume_from)
        self.controller = self._controller()
        self.log(f"effreason.train: {config.method} on the {self.task.name} task, rollouts via {self.engine.backend}, "
                 f"loss via fused ops, {self.context.world_size} process(es) on {self.device}, run folder {self.run_dir}")

    def _on_with_cuda(self, setting: bool | None) -> bool:
        """A ``bool | None`` switch: as given, or None = on with CUDA, off on the CPU."""
        return self.device.type == "cuda" if setting is None else setting

    def load_reference(self):
        """A frozen copy of the starting model (``--model``, not a resumed checkpoint): KL and DPO's reference."""
        reference, _, _ = load_checkpoint(self.config.model, device=self.device, dtype=self.compute_dtype)
        return reference.requires_grad_(False)

    def _controller(self) -> AlphaController | None:
        if self.config.target_token_ratio is None:
            return None
        if self.state["controller"] is not None:
            return AlphaController.from_state_dict(self.state["controller"])
        return AlphaController(target_ratio=self.config.target_token_ratio, alpha=self.config.alpha)

    def _restore(self, folder: Path) -> None:
        saved = checkpoints.load_training_state(folder)
        distributed.load_optimizer_state(self.model, self.optimizer, saved["optimizer"], self.context)
        self.scheduler.load_state_dict(saved["scheduler"])
        checkpoints.restore_rng_states(saved["rng"])
        self.state.update(saved["state"])
        self._truncate_metrics(self.state["step"])
        self.log(f"effreason.train: resumed from {folder} at step {self.state['step']}")

    def _truncate_metrics(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if self.context.is_main and path.exists():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ evaluation

    def _evaluation(self, which: str) -> dict | None:
        path = self.run_dir / f"eval_{which}.json"
        if not self.task.evaluation:
            return None
        if path.exists():
            return json.loads(path.read_text())
        self.log(f"effreason.train: evaluating the {'starting' if which == 'before' else 'trained'} model on {len(self.task.evaluation)} held-out problems")
        problems = self.task.evaluation[self.context.rank::self.context.world_size]
        with distributed.gathered_for_sampling(self.trainable, self.context):
            samples = evaluate_policy(
                self.engine, self.tokenizer, problems, self.task.is_correct,
                max_new_tokens=self.config.eval_max_new_tokens, temperature=self.config.eval_temperature,
                stop_token_ids=self.stop_token_ids, seed=self.config.seed,
            )
        summary = dataset_metrics(self.context.gather(samples))
        if self.context.is_main:
            path.write_text(json.dumps(summary, indent=2))
        self.context.barrier()
        return summary

    # ------------------------------------------------------------------ training

    def _train_steps(self) -> None:
        config = self.config
        progress = None
        if self.context.is_main and not config.quiet:
            from tqdm import tqdm

            progress = tqdm(total=config.steps, initial=self.state["step"], desc="train", unit="step", dynamic_ncols=True)
        while not self._finished():
            metrics = self._one_step()
            if self.context.is_main:
                with open(self.run_dir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                self._report(metrics, progress)
            if self.state["step"] % config.checkpoint_every == 0 or self._finished():
                self._save_checkpoint()
        if progress is not None:
            progress.close()

    def _finished(self) -> bool:
        """``steps`` taken, or the rollout-token budget spent."""
        budget = self.config.rollout_token_budget
        return self.state["step"] >= self.config.steps or (budget is not None and self.state["rollout_tokens"] >= budget)

    def _one_step(self) -> dict:
        config, state = self.config, self.state
        started = time.perf_counter()
        collected = collect_rollout(self._sample, self._score, config, self.context)
        rollout_s = time.perf_counter() - started
        sampled, trained = collected.sampled, collected.trained
        started = time.perf_counter()
        update = self.method.update(trained, state["alpha"]) if trained.responses else {"optimizer_steps": 0, "skipped": 0}
        self.optimizer.zero_grad(set_to_none=True)  # the next rollout does not hold the gradients
        update_s = time.perf_counter() - started
        metrics = self.context.mean({
            "accuracy": float(sampled.correct.float().mean()),
            "mean_tokens": float(sampled.lengths.float().mean()),
            "truncation_rate": float(sampled.truncated.float().mean()),
            "kept_fraction": collected.kept_fraction,
            **update, "rollout_s": rollout_s, "update_s": update_s,
            "rollout_tokens_per_s": float(sampled.lengths.sum()) / max(rollout_s, 1e-9),
        })
        metrics["rollout_tokens_per_s"] *= self.context.world_size
        metrics.update(step=state["step"] + 1, alpha=state["alpha"], lr=self.scheduler.get_last_lr()[0],
                       skipped=update["skipped"], optimizer_steps=update["optimizer_steps"],  # counts, the same on every rank
                       max_tokens=config.max_tokens_at(state["step"]), sampling_rounds=collected.rounds,
                       rollout_tokens=state["rollout_tokens"] + collected.sampled_tokens)
        self._after_update(update, metrics, collected)
        return metrics

    def _sample(self, round_index: int) -> Rollout:
        """This rank's share of the step's next ``prompts_per_step`` prompts, sampled at the step's token limit and graded."""
        config, state = self.config, self.state
        position = state["prompts_consumed"] + round_index * config.prompts_per_step
        local = self.context.local_share(self.task.train.take(position, config.prompts_per_step))
        prompts = [self._encode(problem.question) for problem in local]
        params = SamplingParams(n=config.group_size, temperature=config.temperature, top_p=config.top_p,
                                max_tokens=config.max_tokens_at(state["step"]), stop_token_ids=self.stop_token_ids,
                                seed=step_seed(config.seed, state["step"], self.context.rank, round_index))
        with distributed.gathered_for_sampling(self.trainable, self.context):
            groups = self.engine.generate(prompts, params)
        return self._graded(local, prompts, groups)

    def _score(self, rollout: Rollout) -> torch.Tensor:
        """(S,) rewards of ``--reward`` at this step's alpha, length budget and reward state."""
        state = self.state
        return sequence_rewards(rollout.correct, rollout.lengths, self.config, state["alpha"],
                                budget=self.config.budget_at(state["step"]), state=state["reward_state"])

    def _encode(self, question: str) -> list[int]:
        ids = encode_prompt(question, self.tokenizer)
        if len(ids) > self.config.max_prompt_tokens:
            raise ValueError(f"max_prompt_tokens: a prompt has {len(ids)} tokens (> {self.config.max_prompt_tokens}): {question[:80]!r}")
        return ids

    def _graded(self, problems, prompts, groups) -> Rollout:
        """The groups flattened and graded: correct means the right answer *and* a stop token (the paper's rule)."""
        samples = [(problem, prompt, completion) for problem, prompt, group in zip(problems, prompts, groups) for completion in group]
        finished = [completion.finish_reason == "stop" for _, _, completion in samples]
        correct = [done and bool(self.task.is_correct(self.tokenizer.decode(completion.token_ids, skip_special_tokens=True), problem))
                   for done, (problem, _, completion) in zip(finished, samples)]
        return Rollout(
            prompts=[prompt for _, prompt, _ in samples],
            responses=[completion.token_ids for _, _, completion in samples],
            trainer_logprobs=[completion.trainer_logprobs for _, _, completion in samples],
            sampler_logprobs=[completion.logprobs for _, _, completion in samples],
            correct=torch.tensor(correct, dtype=torch.bool),
            lengths=torch.tensor([len(completion.token_ids) for _, _, completion in samples], dtype=torch.int64),
            truncated=torch.tensor([not done for done in finished], dtype=torch.bool),
            group_size=self.config.group_size,
        )

    def _after_update(self, update: dict, metrics: dict, collected: StepRollout) -> None:
        state = self.state
        sampled = collected.sampled
        correct, lengths = (torch.tensor(self.context.gather(values.tolist())) for values in (sampled.correct, sampled.lengths))
        state["reward_state"] = next_reward_state(correct, lengths, self.config, state["alpha"],
                                                  budget=self.config.budget_at(state["step"]), state=state["reward_state"])
        state["step"] += 1
        state["prompts_consumed"] += collected.prompts
        state["rollout_tokens"] += collected.sampled_tokens
        if update["skipped"]:
            state["skipped_steps"] += update["skipped"]
            state["consecutive_bad"] += update["skipped"]
            logger.warning("step %d: non-finite loss or gradient, %d optimizer step(s) skipped (%d in a row)",
                           state["step"], update["skipped"], state["consecutive_bad"])
            self.log(f"warning: step {state['step']}: non-finite loss or gradient; update skipped "
                     f"({state['consecutive_bad']} in a row, {state['skipped_steps']} in total)")
        if update["optimizer_steps"]:
            state["consecutive_bad"] = 0
        if state["consecutive_bad"] >= self.config.max_bad_steps:
            self._save_checkpoint()
            raise TrainingAborted(
                f"{state['consecutive_bad']} consecutive updates had a non-finite loss or gradient (limit --max-bad-steps "
                f"{self.config.max_bad_steps}); none of them was applied. The weights before them are saved in "
                f"{self.run_dir / checkpoints.CHECKPOINT}; lower --lr or check the data, then --resume {self.run_dir}"
            )
        if self.controller is not None:
            state["alpha"] = self.controller.update(metrics["mean_tokens"])
            state["controller"] = self.controller.state_dict()

    def _report(self, metrics: dict, progress) -> None:
        shown = {"reward": metrics.get("reward_mean"), "loss": metrics.get("loss"), "acc": metrics["accuracy"],
                 "tokens": metrics["mean_tokens"], "alpha": metrics["alpha"] if self.config.method == "rl" and self.config.reward in rewards_using("alpha") else None}
        shown = {name: value for name, value in shown.items() if value is not None}
        if progress is not None:
            progress.set_postfix(**{name: f"{value:.3f}" for name, value in shown.items()},
                                 tok_s=f"{metrics['rollout_tokens_per_s']:.0f}", refresh=False)
            progress.update(1)
        elif self.config.quiet:
            values = "  ".join(f"{name} {value:.3f}" for name, value in shown.items())
            self.log(f"step {metrics['step']}/{self.config.steps}  {values}  rollout {metrics['rollout_s']:.1f}s  "
                     f"update {metrics['update_s']:.1f}s  {metrics['rollout_tokens_per_s']:.0f} tok/s")

    def _save_checkpoint(self) -> None:
        model_state = distributed.full_model_state(self.model, self.context)
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer, self.context)
        if self.context.is_main:
            checkpoints.save_checkpoint(self.run_dir, model_state=model_state, model=self.model, tokenizer=self.tokenizer,
                                        optimizer_state=optimizer_state, scheduler=self.scheduler, state=self.state)
        self.context.barrier()

    # ------------------------------------------------------------------ output

    def _finish(self, before: dict | None, after: dict | None, elapsed_s: float) -> None:
        model_state = distributed.full_model_state(self.model, self.context)
        in_sync = distributed.parameters_in_sync(self.model, self.context)
        if not self.context.is_main:
            return
        checkpoints.export_model(self.run_dir / "model", self.model, self.tokenizer, model_state, self.compute_dtype)
        metrics = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = {"method": self.config.method, "recipe": self.config.recipe, "before": before, "after": after,
                   "steps": self.state["step"], "rollout_tokens": self.state["rollout_tokens"], "skipped_steps": self.state["skipped_steps"],
                   "final_alpha": self.state["alpha"], "time_s": elapsed_s,
                   "world_size": self.context.world_size, "ranks_in_sync": in_sync,
                   "rollout_s": sum(m["rollout_s"] for m in metrics), "update_s": sum(m["update_s"] for m in metrics)}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if metrics:
            plot_training_curves(metrics, self.run_dir / "training_curves.png")
        if before and after:
            plot_accuracy_vs_tokens(before, after, self.run_dir / "accuracy_vs_tokens.png")
            print(format_table(before, after))
        print(f"run folder: {self.run_dir}  ({elapsed_s / 60:.1f} min; rollout {summary['rollout_s']:.0f}s, update {summary['update_s']:.0f}s)")


def warmup_then_constant(config: TrainConfig):
    """LR multiplier: linear warmup over ``ceil(warmup_ratio * optimizer steps)`` steps, then 1."""
    warmup = math.ceil(config.warmup_ratio * config.steps * config.mini_batches)

    def multiplier(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    return multiplier


@torch.no_grad()
def initialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the AdamW state (zeros, step 0) now instead of at the first step, as torch's distributed
    checkpointing does (a step on zero gradients at learning rate 0, which leaves every parameter as it
    is), then set the step counts back to 0: the first real step is the same as without this. The state
    then exists before the first rollout, so the KV cache is never allocated into memory it needs later."""
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if optimizer.state or not parameters:
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    for state in optimizer.state.values():
        state["step"].zero_()
    optimizer.zero_grad(set_to_none=True)


def prepare_for_training(model, *, gradient_checkpointing: bool, packed_forward: bool) -> None:
    """Train mode; each decoder layer recomputed in backward (``gradient_checkpointing``); flash-attn's varlen
    attention over packed rows (``packed_forward``, on CUDA with ``flash_attn`` installed; SDPA otherwise)."""
    model.train()
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    on_cuda = next(model.parameters()).device.type == "cuda"
    if packed_forward and on_cuda and importlib.util.find_spec("flash_attn") is not None:
        model.set_attn_implementation("flash_attention_2")


def _enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant); the name moved in transformers 5.x."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


SMALL_MODEL_PARAMETERS = 20_000_000


def _set_cpu_threads(model, threads: int) -> None:
    """``torch.set_num_threads``: explicit, or 1 for models under ``SMALL_MODEL_PARAMETERS``, whose
    matmuls are too small to split across threads (bench/RESULTS.md has the measurement)."""
    if threads == 0:
        if sum(p.numel() for p in model.parameters()) >= SMALL_MODEL_PARAMETERS:
            return
        threads = 1
    torch.set_num_threads(threads)


def step_seed(seed: int, step: int, rank: int, round_index: int = 0) -> int:
    """Sampling seed of one rank's rollout at ``step`` (``round_index``: a refill round of the step):
    independent of resumption and batching."""
    return (seed * 1_000_003 + step * 1_009 + rank + round_index * 100_000_007) % (2**31 - 1)
