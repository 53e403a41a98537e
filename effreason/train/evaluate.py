"""The before/after evaluation of a run: accuracy and mean response tokens, overall and per difficulty.

Greedy by default (``--eval-temperature 0``), one response per held-out problem. A response
counts as correct when its answer matches, whatever its finish reason (a truncated response
rarely has an answer); ``truncation_rate`` reports how many hit the token limit.
"""

from __future__ import annotations

from collections import defaultdict

from effreason.tasks.prompting import encode_prompt
from effreason.train.rollout import SamplingParams


def evaluate_policy(engine, tokenizer, problems, is_correct, *, max_new_tokens: int, temperature: float,
                    stop_token_ids: tuple[int, ...], seed: int) -> list[dict]:
    """One row per problem: ``difficulty``, ``correct``, ``tokens``, ``truncated``."""
    if not problems:
        return []
    prompts = [encode_prompt(problem.question, tokenizer) for problem in problems]
    params = SamplingParams(n=1, temperature=temperature, max_tokens=max_new_tokens, stop_token_ids=stop_token_ids, seed=seed)
    rows = []
    for problem, (completion,) in zip(problems, engine.generate(prompts, params)):
        text = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        rows.append({
            "difficulty": problem.difficulty,
            "correct": bool(is_correct(text, problem)),
            "tokens": len(completion.token_ids),
            "truncated": completion.finish_reason == "length",
        })
    return rows


def summarise(rows: list[dict]) -> dict:
    """``accuracy`` (in [0, 1]), ``mean_tokens``, ``truncation_rate``, ``num_problems`` and ``by_difficulty``."""
    summary = _aggregate(rows)
    by_level = defaultdict(list)
    for row in rows:
        if row["difficulty"] is not None:
            by_level[row["difficulty"]].append(row)
    summary["by_difficulty"] = {str(level): _aggregate(level_rows) for level, level_rows in sorted(by_level.items())}
    return summary


def _aggregate(rows: list[dict]) -> dict:
    count = max(len(rows), 1)
    return {
        "accuracy": sum(row["correct"] for row in rows) / count,
        "mean_tokens": sum(row["tokens"] for row in rows) / count,
        "truncation_rate": sum(row["truncated"] for row in rows) / count,
        "num_problems": len(rows),
    }


def format_table(before: dict, after: dict) -> str:
    """The before/after table: accuracy (%) and mean tokens, overall and per difficulty, with ratios."""
    lines = [f"{'':>12} {'acc before':>10} {'acc after':>10} {'tok before':>11} {'tok after':>10} {'tokens':>7}"]
    levels = sorted(set(before.get("by_difficulty", {})) | set(after.get("by_difficulty", {})), key=int)
    entries = [(f"level {level}", before["by_difficulty"].get(level), after["by_difficulty"].get(level)) for level in levels]
    for name, first, second in [*entries, ("all", before, after)]:
        if first is None or second is None:
            continue
        ratio = second["mean_tokens"] / first["mean_tokens"] if first["mean_tokens"] else float("nan")
        lines.append(
            f"{name:>12} {100 * first['accuracy']:>9.1f}% {100 * second['accuracy']:>9.1f}% "
            f"{first['mean_tokens']:>11.1f} {second['mean_tokens']:>10.1f} {100 * ratio:>6.0f}%"
        )
    return "\n".join(lines)
