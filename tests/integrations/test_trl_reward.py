"""``paper_reward``: TRL's reward-function calling convention, equal to ``length_penalized_reward`` on the same data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effreason.integrations.trl import paper_reward
from effreason.integrations.trl.reward import completion_text, group_bounds
from effreason.rewards import length_penalized_reward

EOS = 3


def _batch(correct: list[bool], lengths: list[int], group_size: int, conversational: bool = False):
    """TRL's keyword arguments for completions that are right or wrong and ``lengths`` tokens long."""
    num_prompts = len(correct) // group_size
    questions = [f"question {index}" for index in range(num_prompts) for _ in range(group_size)]
    answers = [str(10 + index) for index in range(num_prompts) for _ in range(group_size)]
    texts = [
        f"Reasoning. So the answer is \\boxed{{{answer if right else 'x'}}}."
        for answer, right in zip(answers, correct)
    ]
    completion_ids = [[7] * (length - 1) + [EOS] for length in lengths]
    if conversational:
        prompts = [[{"role": "user", "content": question}] for question in questions]
        completions = [[{"role": "assistant", "content": text}] for text in texts]
    else:
        prompts, completions = questions, texts
    return dict(prompts=prompts, completions=completions, completion_ids=completion_ids, answer=answers)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.4])
def test_equals_length_penalized_reward(alpha):
    generator = torch.Generator().manual_seed(0)
    group_size = 4
    correct = torch.rand(5 * group_size, generator=generator) < 0.6
    correct[:group_size] = False  # a group with no correct answer
    correct[group_size : 2 * group_size] = torch.tensor([True, False, False, False])  # a single correct answer
    lengths = torch.randint(2, 40, (5 * group_size,), generator=generator)
    expected = length_penalized_reward(correct, lengths, group_size, alpha).tolist()

    batch = _batch(correct.tolist(), lengths.tolist(), group_size)
    assert paper_reward(alpha, num_generations=group_size)(**batch) == expected
    assert paper_reward(alpha)(**batch) == expected  # groups found as runs of equal prompts


def test_conversational_equals_plain_text():
    correct, lengths = [True, True, False, True, False, True], [5, 9, 4, 12, 3, 6]
    plain = paper_reward(0.2, num_generations=3)(**_batch(correct, lengths, 3))
    chat = paper_reward(0.2, num_generations=3)(**_batch(correct, lengths, 3, conversational=True))
    assert chat == plain
    assert plain[2] == 0.0 and plain[4] == 0.0 and plain[0] > plain[1]  # shorter correct answer scores higher


def test_runs_of_unequal_size():
    batch = _batch([True] * 6, [4, 8, 6, 10, 3, 9], 6)
    batch["prompts"] = ["a", "a", "b", "b", "b", "c"]
    rewards = paper_reward(0.3)(**batch)
    assert group_bounds(batch["prompts"], None) == [(0, 2), (2, 5), (5, 6)]
    expected = torch.cat([
        length_penalized_reward(torch.ones(2, dtype=torch.bool), torch.tensor([4, 8]), 2, 0.3),
        length_penalized_reward(torch.ones(3, dtype=torch.bool), torch.tensor([6, 10, 3]), 3, 0.3),
        length_penalized_reward(torch.ones(1, dtype=torch.bool), torch.tensor([9]), 1, 0.3),
    ])
    assert rewards == expected.tolist()
    assert rewards[5] == pytest.approx(1 - 0.3 / 2)  # a lone correct answer: z = 0


def test_truncated_completion_counts_as_wrong():
    batch = _batch([True, True, True], [5, 9, 7], 3)
    batch["completion_ids"][1] = batch["completion_ids"][1][:-1] + [7]  # no EOS: truncated
    rewards = paper_reward(0.2, eos_token_ids=[EOS])(**batch)
    lengths = torch.tensor([len(ids) for ids in batch["completion_ids"]])
    expected = length_penalized_reward(torch.tensor([True, False, True]), lengths, 3, 0.2)
    assert rewards == expected.tolist() and rewards[1] == 0.0
    assert paper_reward(0.2)(**batch)[1] > 0.0  # without eos_token_ids the text alone is graded


def test_completion_text_of_message_parts():
    message = {"role": "assistant", "content": [{"type": "text", "text": "so \\boxed{"}, {"type": "text", "text": "4}"}]}
    assert completion_text([message]) == "so \\boxed{4}"


def test_reward_function_name_and_errors():
    batch = _batch([True, False, True, True], [3, 4, 5, 6], 2)
    assert paper_reward().__name__ == "paper_reward"
    with pytest.raises(ValueError, match="answer_column 'solution'"):
        paper_reward(answer_column="solution")(**batch)
    with pytest.raises(ValueError, match="num_generations=3"):
        paper_reward(num_generations=3)(**batch)
    with pytest.raises(ValueError, match="alpha"):
        paper_reward(alpha=1.5)
    with pytest.raises(ValueError, match="num_generations"):
        paper_reward(num_generations=0)
    with pytest.raises(ValueError, match="answer_kind"):
        paper_reward(answer_kind="last")


def test_reward_imports_without_trl():
    """``paper_reward`` is plain Python: importing it loads neither TRL nor transformers."""
    code = (
        "import sys; from effreason.integrations.trl import paper_reward; paper_reward();"
        "assert 'trl' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
