"""Train the shipped warm start with TRL's GRPO, effreason's fused loss and the paper's reward, on the CPU.

    python examples/trl_grpo_tiny.py                 # 8 steps, seconds on a 2-core CPU
    python examples/trl_grpo_tiny.py --steps 40 --alpha 0.4

The model is ``effreason/assets/warmstart`` (a 4-layer Qwen2 that solves the built-in toy
arithmetic task and over-thinks with redundant re-checks); the prompts are toy problems in the
paper's prompt. Two lines differ from a plain TRL script: ``GRPOTrainer`` comes from
``effreason.integrations.trl`` and the reward is ``paper_reward``. The GRPOConfig below is the
paper's objective as TRL expresses it (docs/integrations.md). Prints one line per step: the mean
reward (a correct answer earns between 1 - alpha and 1, a wrong one 0), the mean completion
length in tokens and the gradient norm.
"""

from __future__ import annotations

import argparse
import time

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from effreason.integrations.trl import GRPOTrainer, paper_reward
from effreason.models import load_tokenizer
from effreason.tasks.prompting import PAPER_PROMPT
from effreason.tasks.toy import ToyTask
from effreason.warmstart import warmstart_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--alpha", type=float, default=0.2, help="the paper's length-penalty strength")
    parser.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the paper: 8)")
    parser.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step")
    parser.add_argument("--max-completion-length", type=int, default=192, help="tokens per completion at most")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="Adam learning rate")
    parser.add_argument("--output-dir", default="runs/trl_grpo_tiny", help="TRL's output folder")
    return parser.parse_args(argv)


def toy_dataset(count: int) -> Dataset:
    """Conversational prompts (the paper's prompt) of toy problems with their ``answer`` column."""
    problems = ToyTask(min_ops=2, max_ops=4).problems(count)
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": PAPER_PROMPT.format(question=problem.question)}], "answer": problem.answer}
        for problem in problems
    ])


def paper_config(args: argparse.Namespace) -> GRPOConfig:
    """TRL's GRPO settings of the paper's objective: per-sequence token mean, no std scaling, clip 0.2, no KL
    (the paper's Adam betas, grad clip and constant learning rate; no gradient checkpointing, so that
    generation keeps its KV cache)."""
    return GRPOConfig(
        output_dir=args.output_dir, max_steps=args.steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0,
        loss_type="grpo", scale_rewards="none", epsilon=0.2, beta=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, lr_scheduler_type="constant",
        gradient_checkpointing=False, bf16=False, seed=0,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
    )


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    folder = warmstart_dir()
    tokenizer = load_tokenizer(folder)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        reward_funcs=paper_reward(args.alpha, num_generations=args.num_generations),
        args=paper_config(args),
        train_dataset=toy_dataset(args.steps * args.prompts_per_step),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "reward" in entry]
    for entry in steps:
        print(
            f"step {entry['step']:3d}  reward {entry['reward']:.3f}  "
            f"length {entry['completions/mean_length']:6.1f} tokens  grad norm {entry['grad_norm']:.4f}"
        )
    print(f"{len(steps)} steps in {time.perf_counter() - start:.1f} s")
    return steps


if __name__ == "__main__":
    main()
