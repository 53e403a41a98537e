"""What rejection-sampling SFT and DPO share: sample, grade, pack, optimise, evaluate, write the run folder.

A baseline run follows ``python -m effreason.train`` step for step, so all three methods see the
same prompts and the same number of samples: each of ``config.steps`` steps samples
``config.group_size`` responses to ``config.prompts_per_step`` training prompts from the current
model (the warm start at the first step), grades them as the RL loop does (right answer *and*
ended with a stop token), lets the method turn each prompt's group into training units, and
takes ``config.mini_batches`` optimizer steps per pass over those units (AdamW, the loop's
warmup-then-constant LR, grad clip). Before and after training the model is evaluated with the
training loop's own evaluation (``effreason.train.evaluate``). The run folder has the loop's
layout::

    config.json          the TrainConfig (loadable with TrainConfig.from_json_file)
    method.json          {"method": "rs-sft" | "dpo", "options": {...}}
    metrics.jsonl        one line per step
    eval_before.json     held-out evaluation of the starting model (when eval_problems > 0)
    eval_after.json      ... of the trained model
    summary.json         {"method", "before", "after", "steps", "time_s", ...}
    model/               the trained model and tokenizer (Hugging Face format)

Unlike the RL loop no resumable ``checkpoint/`` is written (a rerun starts over): the sweep
resumes any run folder holding one with the RL loop. Single process only (no ``torchrun``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from effreason.models import load_checkpoint, pad_token_id, stop_token_ids
from effreason.losses import segment_sum
from effreason.tasks.prompting import encode_prompt
from effreason.train.config import TrainConfig
from effreason.train.data import build_task
from effreason.train.evaluate import evaluate_policy, format_table, summarise
from effreason.train.loop import step_seed, seed_everything, warmup_then_constant
from effreason.train.run_folder import cleanup_if_no_step, default_run_dir
from effreason.train.packing import MicroBatch, build_micro_batch, plan_micro_batches
from effreason.train.rollout import RolloutEngine, SamplingParams
from effreason.ops import fused_logprobs
from effreason.train.step import packed_hidden_states


# ------------------------------------------------------------------------------ samples


@dataclass
class SampledGroup:
    """The ``k`` graded samples of one prompt. ``responses[j]``: token ids (stop token kept);
    ``correct[j]``: right answer and ended by a stop token (the paper's rule)."""

    prompt_ids: list[int]
    responses: list[list[int]]
    correct: list[bool]


@dataclass
class TrainingUnit:
    """What a method trains on from one prompt: one response (SFT) or a (chosen, rejected) pair (DPO)."""

    prompt_ids: list[int]
    responses: tuple[list[int], ...]


def shortest_correct(group: SampledGroup) -> list[int] | None:
    """The correct response with the fewest tokens (the first in sample order on ties); None without one."""
    correct = [response for response, ok in zip(group.responses, group.correct) if ok]
    return min(correct, key=len) if correct else None


def longest_correct(group: SampledGroup) -> list[int] | None:
    """The correct response with the most tokens (the first in sample order on ties); None without one."""
    correct = [response for response, ok in zip(group.responses, group.correct) if ok]
    return max(correct, key=len) if correct else None


# ------------------------------------------------------------------------------ methods


class BaselineMethod:
    """A baseline: how groups become units, and the loss of a packed micro-batch of units.

    ``options`` is the method's options dataclass (it has ``epochs``: passes over each step's
    units); ``response_names`` name the responses of a unit (``("selected",)``, ``("chosen",
    "rejected")``). ``loss`` returns the micro-batch's loss *summed* over what ``normaliser``
    counts (tokens for SFT, pairs for DPO) and a dict of summed statistics; the update divides
    both by the mini-batch's total count, so micro-batching never changes the gradient.
    """

    name: str = ""
    response_names: tuple[str, ...] = ()

    def __init__(self, options):
        self.options = options

    @property
    def rows_per_unit(self) -> int:
        return len(self.response_names)

    def prepare(self, model) -> None:
        """Called once with the loaded model, before any training (DPO freezes its reference here)."""

    def select(self, group: SampledGroup) -> TrainingUnit | None:
        raise NotImplementedError

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def normaliser(self, batch: MicroBatch) -> int:
        raise NotImplementedError


def require_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


# ------------------------------------------------------------------------------ packing and log-probs


def pack_units(units: list[TrainingUnit], rows_per_unit: int, token_budget: int, pad_token_id: int) -> list[MicroBatch]:
    """Units flattened to rows (a unit's responses consecutive) and packed into micro-batches of whole
    units, ``rows * longest_row <= token_budget`` (``effreason.train.packing``; the RL-only fields of
    ``MicroBatch`` are filled with zeros)."""
    prompts = [unit.prompt_ids for unit in units for _ in unit.responses]
    responses = [response for unit in units for response in unit.responses]
    row_lengths = [len(p) + len(r) - 1 for p, r in zip(prompts, responses)]
    unused_logprobs = [[0.0] * len(r) for r in responses]
    unused_correct = torch.ones(len(responses), dtype=torch.bool)
    unused_advantages = torch.zeros(len(responses), dtype=torch.float32)
    return [
        build_micro_batch(prompts, responses, unused_logprobs, unused_correct, unused_advantages, rows, pad_token_id)
        for rows in plan_micro_batches(row_lengths, rows_per_unit, token_budget)
    ]


def sequence_logprobs(model, batch: MicroBatch) -> torch.Tensor:
    """``log pi(y_s | x_s) = sum_t log softmax(z_t)[y_t]`` over each row's response tokens, (S,) float32.

    The fused LM-head op of the RL loss (``effreason.ops.fused_logprobs``), so the (N, V) logits
    never exist; differentiable.
    """
    hidden = packed_hidden_states(model, batch)  # (N, H)
    token_logprobs = fused_logprobs(hidden, model.lm_head.weight, batch.targets, 1.0)  # (N,)
    return segment_sum(token_logprobs.float(), batch.cu_seqlens)  # (S,)


# ------------------------------------------------------------------------------ update


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` in at most ``parts`` consecutive chunks whose sizes differ by at most one."""
    parts = min(parts, len(items))
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)] if parts else []
    return [items[start:stop] for start, stop in zip(bounds, bounds[1:])]


def optimizer_step(model, optimizer, scheduler, method: BaselineMethod, batches: list[MicroBatch], *,
                   grad_clip: float, device) -> dict | None:
    """One optimizer step on a mini-batch: ``loss = sum_b loss_b / sum_b normaliser_b``.

    Returns the mini-batch's ``loss``, ``grad_norm`` and mean statistics, or None when the loss or
    the gradient norm is not finite (the step is then skipped).
    """
    total = sum(method.normaliser(batch) for batch in batches)
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for batch in batches:
        loss, stats = method.loss(model, batch.to(device))
        (loss / total).backward()
        for name, value in dict(stats, loss=float(loss.detach())).items():
            sums[name] = sums.get(name, 0.0) + value
    parameters = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf))
    if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    return {**{name: value / total for name, value in sums.items()}, "grad_norm": grad_norm}


def train_on_units(model, optimizer, scheduler, method: BaselineMethod, units: list[TrainingUnit],
                   config: TrainConfig, *, pad_token_id: int, device) -> dict:
    """``method.options.epochs`` passes over ``units``, each split into ``config.mini_batches`` optimizer steps.

    Returns the statistics averaged over the steps taken (None when there were none), and the
    counts ``optimizer_steps`` and ``skipped``.
    """
    results, skipped = [], 0
    for _ in range(method.options.epochs):
        for mini_batch in split_evenly(units, config.mini_batches):
            batches = pack_units(mini_batch, method.rows_per_unit, config.micro_batch_tokens, pad_token_id)
            result = optimizer_step(model, optimizer, scheduler, method, batches, grad_clip=config.grad_clip, device=device)
            skipped += result is None
            results += [result] if result is not None else []
    names = results[0].keys() if results else ("loss", "grad_norm")
    averaged = {name: (sum(r[name] for r in results) / len(results) if results else None) for name in names}
    return {**averaged, "optimizer_steps": len(results), "skipped": skipped}


# ------------------------------------------------------------------------------ the run


@dataclass
class Session:
    """Everything one baseline run holds."""

    config: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    task: object
    engine: RolloutEngine
    stop_token_ids: tuple[int, ...]
    pad_token_id: int
    device: torch.device


def open_session(config: TrainConfig) -> Session:
    """Seed, load the starting model (``config.model``, default the built-in warm start) and the task."""
    seed_everything(config.seed)
    model, tokenizer, _ = load_checkpoint(config.model, device=config.device, dtype=config.dtype)
    model.train()
    stops = stop_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer, stops)
    engine = RolloutEngine(model, pad_token_id=pad, max_batch_prompts=config.eval_batch_size, backend=config.rollout_backend)
    run_dir = Path(config.out) if config.out else default_run_dir()
    return Session(config, run_dir, model, tokenizer, build_task(config), engine, stops, pad, next(model.parameters()).device)


def sample_groups(session: Session, step: int) -> tuple[list[SampledGroup], dict]:
    """``group_size`` graded samples of each of the step's ``prompts_per_step`` training prompts, and
    the rollout metrics (``accuracy``, ``mean_tokens``, ``truncation_rate``, ``rollout_s``, tokens/s)."""
    config, tokenizer = session.config, session.tokenizer
    problems = session.task.train.take(step * config.prompts_per_step, config.prompts_per_step)
    prompts = [encode_prompt(problem.question, tokenizer) for problem in problems]
    params = SamplingParams(n=config.group_size, temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_new_tokens, stop_token_ids=session.stop_token_ids,
                            seed=step_seed(config.seed, step, 0))
    started = time.perf_counter()
    completions = session.engine.generate(prompts, params)
    rollout_s = time.perf_counter() - started
    groups = [_graded_group(session, problem, prompt, group) for problem, prompt, group in zip(problems, prompts, completions)]
    samples = [c for group in completions for c in group]
    num_tokens = sum(len(c.token_ids) for c in samples)
    return groups, {
        "accuracy": sum(sum(g.correct) for g in groups) / len(samples),
        "mean_tokens": num_tokens / len(samples),
        "truncation_rate": sum(c.finish_reason != "stop" for c in samples) / len(samples),
        "rollout_s": rollout_s,
        "rollout_tokens_per_s": num_tokens / max(rollout_s, 1e-9),
    }


def _graded_group(session: Session, problem, prompt_ids: list[int], completions) -> SampledGroup:
    decode = session.tokenizer.decode
    correct = [c.finish_reason == "stop" and bool(session.task.is_correct(decode(c.token_ids, skip_special_tokens=True), problem))
               for c in completions]
    return SampledGroup(prompt_ids, [list(c.token_ids) for c in completions], correct)


def evaluation(session: Session, which: str) -> dict | None:
    """The training loop's held-out evaluation (``evaluate_policy`` + ``summarise``), saved as ``eval_<which>.json``."""
    config = session.config
    if not session.task.evaluation:
        return None
    rows = evaluate_policy(session.engine, session.tokenizer, session.task.evaluation, session.task.is_correct,
                           max_new_tokens=config.eval_max_new_tokens, temperature=config.eval_temperature,
                           stop_token_ids=session.stop_token_ids, seed=config.seed)
    summary = summarise(rows)
    (session.run_dir / f"eval_{which}.json").write_text(json.dumps(summary, indent=2))
    return summary


def one_step(session: Session, method: BaselineMethod, optimizer, scheduler, step: int) -> dict:
    """Sample, select, train; the step's metrics line."""
    groups, metrics = sample_groups(session, step)
    units = [unit for unit in map(method.select, groups) if unit is not None]
    started = time.perf_counter()
    update = train_on_units(session.model, optimizer, scheduler, method, units, session.config,
                            pad_token_id=session.pad_token_id, device=session.device)
    metrics.update(update, update_s=time.perf_counter() - started, units=len(units), lr=scheduler.get_last_lr()[0])
    for index, name in enumerate(method.response_names):
        metrics[f"{name}_tokens"] = sum(len(u.responses[index]) for u in units) / len(units) if units else None
    return {"step": step + 1, **metrics}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_baseline(config: TrainConfig, method: BaselineMethod) -> Path:
    """Train with ``method`` according to ``config`` and return the run folder (module docstring)."""
    _require_supported(config, method)
    started = time.perf_counter()
    session = open_session(config)
    with cleanup_if_no_step(session.run_dir):
        _prepare_folder(session, method)
        history, before, after = _train(session, method)
        totals = {"steps": config.steps, "skipped_steps": sum(m["skipped"] for m in history),
                  "rollout_s": sum(m["rollout_s"] for m in history), "update_s": sum(m["update_s"] for m in history),
                  "time_s": time.perf_counter() - started}
        _finish(session, method, before, after, totals)
    return session.run_dir


def _train(session: Session, method: BaselineMethod) -> tuple[list[dict], dict | None, dict | None]:
    """Evaluate, train ``config.steps`` steps (one metrics line each), evaluate: (history, before, after)."""
    config = session.config
    method.prepare(session.model)
    optimizer = torch.optim.AdamW(session.model.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_constant(config))
    log(f"effreason.baselines: {method.name} on the {session.task.name} task, run folder {session.run_dir}")
    before = evaluation(session, "before")
    history = []
    for step in range(config.steps):
        history.append(one_step(session, method, optimizer, scheduler, step))
        with open(session.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(history[-1]) + "\n")
        _log_step(session, history[-1])
    return history, before, evaluation(session, "after")


def _require_supported(config: TrainConfig, method: BaselineMethod) -> None:
    if config.resume:
        raise ValueError(f"resume: {method.name} runs cannot be resumed (no checkpoints); rerun without --resume")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"{method.name} runs in a single process; launch it without torchrun")


def _prepare_folder(session: Session, method: BaselineMethod) -> None:
    session.run_dir.mkdir(parents=True, exist_ok=True)
    (session.run_dir / "config.json").write_text(session.config.to_json())
    (session.run_dir / "method.json").write_text(json.dumps({"method": method.name, "options": asdict(method.options)}, indent=2))
    (session.run_dir / "metrics.jsonl").write_text("")
    (session.run_dir / "summary.json").unlink(missing_ok=True)


def _log_step(session: Session, metrics: dict) -> None:
    loss = "n/a" if metrics["loss"] is None else f"{metrics['loss']:.4f}"
    log(f"step {metrics['step']}/{session.config.steps}  acc {metrics['accuracy']:.3f}  tokens {metrics['mean_tokens']:.1f}  "
                 f"units {metrics['units']}  loss {loss}  rollout {metrics['rollout_s']:.1f}s  update {metrics['update_s']:.1f}s")


def _finish(session: Session, method: BaselineMethod, before: dict | None, after: dict | None, totals: dict) -> None:
    """Save ``model/`` (written beside, then renamed into place) and ``summary.json`` (last: marks the run finished)."""
    final, temporary = session.run_dir / "model", session.run_dir / "model.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    session.model.save_pretrained(temporary, safe_serialization=True)
    session.tokenizer.save_pretrained(temporary)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    summary = {"method": method.name, "options": asdict(method.options), "before": before, "after": after, **totals}
    (session.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if before and after:
        print(format_table(before, after))
    print(f"run folder: {session.run_dir}  ({totals['time_s'] / 60:.1f} min; rollout {totals['rollout_s']:.0f}s, update {totals['update_s']:.0f}s)")

