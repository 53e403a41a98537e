"""Prompting, sampling and the cut-off / prompted-budget baselines, against a scripted fake sampler."""

from __future__ import annotations

import pytest

from effreason.data import score_response
from effreason.eval.evaluate import dataset_labels, grade_responses
from effreason.eval.generation import (
    BUDGET_INSTRUCTION, FORCE_ANSWER_TEXT, FORCE_ANSWER_TOKENS, close_braces, generate_responses, question_with_budget,
)
from effreason.sampler import Completion, SamplingParams
from effreason.tasks.problem import Problem


class CharTokenizer:
    """One token per character (ids = code points), no chat template."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(char) for char in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


class ScriptedSampler:
    """Answers the i-th prompt of a first call with ``first[i]`` and records every call."""

    def __init__(self, first: list[list[tuple[str, str]]], forced: str = "7}"):
        self.first, self.forced, self.calls = first, forced, []

    def generate(self, prompts, params, progress=False):
        self.calls.append((prompts, params))
        if len(self.calls) == 1:
            return [[self._completion(text, reason) for text, reason in row] for row in self.first]
        return [[self._completion(self.forced, "stop")] for _ in prompts]

    @staticmethod
    def _completion(text, reason):
        ids = [ord(char) for char in text]
        return Completion(ids, [0.0] * len(ids), [0.0] * len(ids), reason)


PROBLEMS = [Problem("What is 3+4?", "7", difficulty=1, source="gsm8k", uid="p0"),
            Problem("What is 1+1?", "2", difficulty=2, source="gsm8k", uid="p1")]
PARAMS = SamplingParams(n=2, temperature=0.6, max_tokens=10, stop_token_ids=(0,), seed=3)


def test_generate_and_grade_without_forcing():
    sampler = ScriptedSampler([[("\\boxed{7}", "stop"), ("so 3+4 is", "length")],
                               [("\\boxed{2}", "stop"), ("\\boxed{3}", "stop")]])
    responses = generate_responses(sampler, CharTokenizer(), PROBLEMS, PARAMS)
    assert len(sampler.calls) == 1
    prompts, params = sampler.calls[0]
    assert params is PARAMS and "What is 3+4?" in "".join(map(chr, prompts[0]))
    samples = grade_responses(PROBLEMS, responses, score_response)
    assert [s.correct for s in samples] == [True, False, True, False]
    assert [s.num_tokens for s in samples] == [9, 9, 9, 9]
    assert [s.finish_reason for s in samples] == ["stop", "length", "stop", "stop"]
    assert [(s.uid, s.sample_index, s.difficulty) for s in samples][:2] == [("p0", 0, 1), ("p0", 1, 1)]


def test_force_answer_finishes_only_cut_responses():
    sampler = ScriptedSampler([[("\\boxed{7}", "stop"), ("so 3+4 is", "length")],
                               [("\\boxed{2}", "stop"), ("\\boxed{3}", "stop")]], forced="7}. Done")
    responses = generate_responses(sampler, CharTokenizer(), PROBLEMS, PARAMS, force_answer=True)
    assert len(sampler.calls) == 2
    continuation, params = sampler.calls[1]
    assert len(continuation) == 1 and "".join(map(chr, continuation[0])).endswith("so 3+4 is" + FORCE_ANSWER_TEXT)
    assert params.n == 1 and params.temperature == 0.0 and params.stop_token_ids == (0,)
    forced = responses[0][1]
    assert forced.text == "so 3+4 is" + FORCE_ANSWER_TEXT + "7}"
    assert forced.num_tokens == len("so 3+4 is") + len(FORCE_ANSWER_TEXT) + len("7}. Done")
    assert forced.finish_reason == "length"
    assert [s.correct for s in grade_responses(PROBLEMS, responses, score_response)] == [True, True, True, False]


def test_force_answer_fits_the_context():
    sampler = ScriptedSampler([[("\\boxed{7}", "stop"), ("abcdefghij", "length")],
                               [("\\boxed{2}", "stop"), ("\\boxed{3}", "stop")]], forced="7}")
    prompt_length = len(sampler_prompt(PROBLEMS[0]))
    context = prompt_length + len(FORCE_ANSWER_TEXT) + FORCE_ANSWER_TOKENS + 4  # room for 4 of the 10 cut tokens
    responses = generate_responses(sampler, CharTokenizer(), PROBLEMS, PARAMS, force_answer=True, context_length=context)
    [continuation], _ = sampler.calls[1]
    assert len(continuation) == prompt_length + 4 + len(FORCE_ANSWER_TEXT)
    assert responses[0][1].text == "abcd" + FORCE_ANSWER_TEXT + "7}"
    tight = ScriptedSampler(sampler.first)
    generate_responses(tight, CharTokenizer(), PROBLEMS, PARAMS, force_answer=True, context_length=prompt_length)
    assert len(tight.calls) == 1  # no room at all: the cut response stays as it is


def sampler_prompt(problem):
    from effreason.tasks.prompting import encode_prompt

    return encode_prompt(problem.question, CharTokenizer())


def test_force_answer_without_cut_responses_samples_once():
    sampler = ScriptedSampler([[("\\boxed{7}", "stop")] * 2, [("\\boxed{2}", "stop")] * 2])
    generate_responses(sampler, CharTokenizer(), PROBLEMS, PARAMS, force_answer=True)
    assert len(sampler.calls) == 1


def test_prompt_budget_reaches_the_prompt():
    sampler = ScriptedSampler([[("a", "stop")] * 2] * 2)
    generate_responses(sampler, CharTokenizer(), PROBLEMS, PARAMS, prompt_budget=50)
    prompt = "".join(map(chr, sampler.calls[0][0][0]))
    assert BUDGET_INSTRUCTION.format(budget=50) in prompt
    assert question_with_budget("Q?", None) == "Q?"


@pytest.mark.parametrize("text,closed", [("7}", "7}"), ("7", "7}"), ("\\frac{1}{2}} more", "\\frac{1}{2}}"), ("\\frac{1", "\\frac{1}}")])
def test_close_braces(text, closed):
    assert close_braces(text) == closed


def test_dataset_labels():
    assert dataset_labels(["toy", "gsm8k:a/test.jsonl", "gym:chain_sum"]) == ["toy", "gsm8k", "gym:chain_sum"]
    assert dataset_labels(["math500:x/easy.jsonl", "math500:y/hard.parquet"]) == ["math500:easy", "math500:hard"]
    with pytest.raises(ValueError, match="twice"):
        dataset_labels(["toy", "toy"])
