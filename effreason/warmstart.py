"""The built-in "verbose reasoner": a tiny Qwen2 trained from scratch to over-think the toy task.

The warm start of the miniature RL run: SFT on verbose traces of :mod:`effreason.tasks.toy`
(the needed steps plus ``Uniform{0..num_ops}`` redundant re-checks), loss on response tokens
only. A copy ships in ``effreason/assets/warmstart/``; rebuild it (deterministic from the seed on
one machine; another CPU rounds differently) with::

    python -m effreason.warmstart                          # the shipped copy (bench/RESULTS.md: build time)
    python -m effreason.warmstart --steps 2 --out /tmp/ws  # smoke run

The run prints a held-out greedy evaluation table (accuracy, mean response tokens and the
share of those tokens spent on re-checks, per difficulty). Check it after a rebuild: whether this
tiny model learns the longer chains depends on the seed (and on rounding); some seeds stall far
below the shipped copy's accuracy (bench/RESULTS.md lists the builds measured).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from effreason.tasks.prompting import build_prompt, encode_prompt
from effreason.tasks.toy import TRACE_STYLES, ToyTask
from effreason.train.methods.rs_sft import response_nll
from effreason.train.methods.units import TrainingUnit, pack_units
from effreason.train.step import optimizer_steps

SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "warmstart"
CACHE_DIR = Path.home() / ".cache" / "effreason" / "warmstart"

BOS, EOS, PAD, UNK = "<|bos|>", "<|im_end|>", "<|pad|>", "<|unk|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IM_START]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Pieces: \boxed{ whole, every digit alone, words, single punctuation marks; each may carry one
# leading space. Byte-level mapping afterwards makes decode(encode(text)) == text exactly.
PIECE_PATTERN = r" ?\\boxed\{| ?\d| ?[A-Za-z]+| ?[^\sA-Za-z\d]|\s+"
RECHECK_PATTERN = re.compile(r" ?Wait, let me verify step \d+: [^.]*\. Yes\.")
VOCAB_CORPUS_SIZE = 2000
MICRO_BATCH_TOKENS = 16384  # padded tokens per micro-batch: a whole batch of the longest traces fits in one
GRAD_CLIP = 1.0


@dataclass
class WarmstartConfig:
    """Everything that determines the shipped checkpoint."""

    seed: int = 0
    steps: int = 3200
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    eval_problems: int = 504
    max_new_tokens: int = 320
    min_ops: int = 2
    max_ops: int = 8
    # "answer-first" builds the second miniature's warm start (effreason.tasks.toy): the answer is
    # boxed before the re-checks, so they cannot change correctness.
    trace_style: str = "recheck-then-answer"
    # One intra-op thread: the tiny model's matmuls are too small to split, and on a shared 2-core
    # machine two threads spin against other processes (bench/RESULTS.md has the measurement).
    threads: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "threads", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.trace_style not in TRACE_STYLES:
            raise ValueError(f"trace_style must be one of {TRACE_STYLES}, got {self.trace_style!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")


# ---------------------------------------------------------------- tokenizer


def vocabulary_corpus(task: ToyTask) -> list[str]:
    """Texts that contain every piece the task can produce: prompts, verbose traces, digits."""
    rng = random.Random(0)
    problems = task.problems(VOCAB_CORPUS_SIZE, split="train", seed=0)
    texts = [build_prompt(p.question, tokenizer=None) for p in problems]
    texts += [task.verbose_trace(p, rng) for p in problems]
    texts += ["user\nassistant\n", " ".join("0123456789") + "0123456789 +-*=.,:?{}"]
    return texts


def build_tokenizer(task: ToyTask):
    """A word-level byte-mapped ``PreTrainedTokenizerFast`` over the task's closed vocabulary,
    with bos/eos/pad/unk and a ChatML-style chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    pieces = {piece for text in vocabulary_corpus(task) for piece, _ in pre_tokenizer.pre_tokenize_str(text)}
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(pieces))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------- model


def build_model(config: WarmstartConfig, tokenizer):
    """A randomly initialised tiny ``Qwen2ForCausalLM`` (GQA, tied embeddings)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(model_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# ---------------------------------------------------------------- SFT


def sft_unit(problem, response: str, tokenizer) -> TrainingUnit:
    """One SFT example: the prompt's ids (context) and the response's ids + EOS (the target)."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return TrainingUnit(encode_prompt(problem.question, tokenizer), (response_ids,))


def training_units(task: ToyTask, tokenizer, config: WarmstartConfig):
    """Endless batches of ``batch_size`` units on fresh train-split problems. Each batch holds one
    difficulty (so little padding); difficulties cycle in a shuffled order per round."""
    rng = random.Random(config.seed)
    round_index = 0
    while True:
        order = list(task.difficulties)
        rng.shuffle(order)
        for difficulty in order:
            level = ToyTask(difficulty, difficulty)
            problems = level.problems(config.batch_size, split="train", seed=config.seed * 100003 + round_index)
            round_index += 1
            yield [sft_unit(p, task.verbose_trace(p, rng, config.trace_style), tokenizer) for p in problems]


def learning_rate(step: int, config: WarmstartConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to 0: ``lr * (1 + cos(pi * progress)) / 2``.

    Decaying to zero makes the last steps settle rather than sample: with a floor of 10% of
    ``lr`` the final weights stayed noisy enough that two runs equal up to float rounding ended
    far apart in accuracy."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model, tokenizer, task: ToyTask, config: WarmstartConfig, log=print) -> None:
    """SFT with AdamW through the training loop's update (:func:`effreason.train.step.optimizer_steps`
    with the rs-sft method's loss, :func:`effreason.train.methods.rs_sft.response_nll`): one
    optimizer step per batch on ``L = -(1 / sum_s |y_s|) sum_s sum_t log pi(y_st | x_s, y_s<t)``,
    the mean cross-entropy over response tokens."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, config) / config.lr)
    batches = training_units(task, tokenizer, config)
    model.train()
    started = time.time()
    for step in range(config.steps):
        units = next(batches)
        weight = 1.0 / sum(len(unit.responses[0]) for unit in units)
        mini_batch = [(batch, weight) for batch in pack_units(units, 1, MICRO_BATCH_TOKENS, tokenizer.pad_token_id)]
        update = optimizer_steps(model, optimizer, scheduler, [mini_batch], response_nll, grad_clip=GRAD_CLIP)
        if step % 50 == 0 or step == config.steps - 1:
            log(f"step {step:5d}  loss {update['loss']:.4f}  lr {learning_rate(step, config):.2e}  {time.time() - started:6.0f}s")
    model.eval()


# ---------------------------------------------------------------- evaluation


def recheck_token_count(response_text: str, tokenizer) -> int:
    """Tokens spent on re-checks: the response's length minus its length with them removed."""
    without = RECHECK_PATTERN.sub("", response_text)
    return num_tokens(response_text, tokenizer) - num_tokens(without, tokenizer)


def num_tokens(text: str, tokenizer) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def evaluate(model, tokenizer, task: ToyTask, config: WarmstartConfig) -> dict:
    """Held-out greedy evaluation with the training run's pieces (the sampler, the task's grading,
    :func:`effreason.eval.metrics.dataset_metrics`), plus ``recheck_share``, the share of response
    tokens spent on re-checks, overall and per difficulty."""
    from effreason.eval.evaluate import grade_responses
    from effreason.eval.generation import generate_responses
    from effreason.eval.metrics import dataset_metrics
    from effreason.models import stop_token_ids
    from effreason.sampler import Sampler, SamplingParams

    problems = task.problems(config.eval_problems, split="test", seed=0)  # the training run's held-out set, whatever the seed
    params = SamplingParams(n=1, temperature=0.0, max_tokens=config.max_new_tokens, stop_token_ids=stop_token_ids(model, tokenizer))
    responses = generate_responses(Sampler(model), tokenizer, problems, params)
    metrics = dataset_metrics(grade_responses(problems, responses, task.is_correct))
    texts = [(problem.difficulty, row[0]) for problem, row in zip(problems, responses)]
    metrics["recheck_share"] = recheck_share([response for _, response in texts], tokenizer)
    for level, stats in metrics["by_difficulty"].items():
        stats["recheck_share"] = recheck_share([response for difficulty, response in texts if str(difficulty) == level], tokenizer)
    return metrics


def recheck_share(responses, tokenizer) -> float:
    """Re-check tokens over all response tokens of ``responses`` (:class:`effreason.eval.generation.Response`)."""
    total = sum(response.num_tokens for response in responses)
    return sum(recheck_token_count(response.text, tokenizer) for response in responses) / max(1, total)


def format_table(metrics: dict) -> str:
    """Per difficulty and overall: accuracy, mean tokens, re-check share, responses that ended with EOS."""
    from effreason.eval.report import fixed_width_table

    rows = [(level, stats) for level, stats in metrics["by_difficulty"].items()] + [("all", metrics)]
    return fixed_width_table(
        ["difficulty", "accuracy", "mean tokens", "recheck share", "eos"],
        [[name, f"{100 * stats['accuracy']:.1f}%", f"{stats['mean_tokens']:.1f}", f"{100 * stats['recheck_share']:.1f}%",
          f"{100 * (1 - stats['truncation_rate']):.0f}%"] for name, stats in rows],
        first_column="right",
    )


# ---------------------------------------------------------------- build / load


def build_warmstart(config: WarmstartConfig, out_dir: Path, log=print) -> dict:
    """Train the warm start from scratch, evaluate it, save model + tokenizer + report to ``out_dir``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    task = ToyTask(config.min_ops, config.max_ops)
    tokenizer = build_tokenizer(task)
    model = build_model(config, tokenizer)
    log(f"warm start: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")
    started = time.time()
    train(model, tokenizer, task, config, log=log)
    return evaluate_and_save(model, tokenizer, task, config, out_dir, train_seconds=time.time() - started, log=log)


def evaluate_and_save(model, tokenizer, task: ToyTask, config: WarmstartConfig, out_dir: Path, *, train_seconds: float, log=print) -> dict:
    """Held-out greedy evaluation, printed as a table, then model + tokenizer + report saved to ``out_dir``."""
    summary = evaluate(model, tokenizer, task, config)
    log(format_table(summary))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    report = {"config": asdict(config), "train_seconds": train_seconds, "eval": summary}
    (out_dir / "warmstart_report.json").write_text(json.dumps(report, indent=2))
    return report


def warmstart_dir() -> Path:
    """The shipped checkpoint folder; when it is missing, the cached build under
    ``~/.cache/effreason/warmstart`` (built now if absent)."""
    if (SHIPPED_DIR / "model.safetensors").exists():
        return SHIPPED_DIR
    if not (CACHE_DIR / "model.safetensors").exists():
        print(f"effreason: no shipped warm start; building it into {CACHE_DIR} (15-20 min on a 2-core CPU)", file=sys.stderr)
        build_warmstart(WarmstartConfig(), CACHE_DIR, log=lambda line: print(line, file=sys.stderr))
    return CACHE_DIR


def parse_args(argv=None) -> tuple[WarmstartConfig, Path]:
    defaults = WarmstartConfig()
    parser = argparse.ArgumentParser(prog="python -m effreason.warmstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="output folder (default: the shipped copy)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="SFT optimizer steps")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for data and initialisation")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch intra-op threads")
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems, help="held-out problems to evaluate")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="greedy evaluation length cap")
    parser.add_argument("--trace-style", choices=TRACE_STYLES, default=defaults.trace_style,
                        help="where the verbose traces box the answer: after the re-checks (the built-in miniature) or "
                             "before them (answer-first: the second miniature, where re-checks cannot change correctness)")
    args = parser.parse_args(argv)
    config = WarmstartConfig(
        seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_problems=args.eval_problems,
        threads=args.threads, max_new_tokens=args.max_new_tokens, warmup_steps=min(defaults.warmup_steps, args.steps),
        trace_style=args.trace_style,
    )
    return config, args.out


def main(argv=None) -> None:
    config, out_dir = parse_args(argv)
    build_warmstart(config, out_dir)
    print(f"saved to {out_dir}")


if __name__ == "__main__":
    main()
