"""Responses for evaluation: the paper's prompt, the sampler, and the two prompting/cut-off baselines.

* Prompt: :func:`effreason.tasks.prompting.encode_prompt` (the paper's prompt in the model's chat
  template). With ``prompt_budget = X`` the question ends with "Answer in fewer than X tokens."
  (the reviewers' prompted-budget baseline).
* ``force_answer`` (generation cut-off baseline): a response cut at ``max_new_tokens`` gets
  ``FORCE_ANSWER_TEXT`` appended and up to ``FORCE_ANSWER_TOKENS`` more greedy tokens, so it
  still states an answer; its length counts all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from effreason.sampler import SamplingParams
from effreason.tasks.problem import Problem
from effreason.tasks.prompting import encode_prompt

FORCE_ANSWER_TEXT = " So the answer is \\boxed{"
FORCE_ANSWER_TOKENS = 16
BUDGET_INSTRUCTION = "Answer in fewer than {budget} tokens."


@dataclass(frozen=True)
class Response:
    """One generated response: decoded text, number of response tokens, ``"stop"`` or ``"length"``."""

    text: str
    num_tokens: int
    finish_reason: str


def question_with_budget(question: str, prompt_budget: int | None) -> str:
    """The question, followed by the budget instruction when ``prompt_budget`` is set."""
    if prompt_budget is None:
        return question
    return f"{question} {BUDGET_INSTRUCTION.format(budget=prompt_budget)}"


def generate_responses(sampler, tokenizer, problems: list[Problem], params: SamplingParams, *,
                       prompt_budget: int | None = None, force_answer: bool = False,
                       context_length: int | None = None, progress: bool = False) -> list[list[Response]]:
    """``params.n`` responses per problem (``result[i][j]``: sample ``j`` of problem ``i``).

    ``context_length`` (the model's, for ``force_answer``): a response cut by the context is
    shortened so that it, the forcing text and the forced answer still fit.
    """
    prompts = [encode_prompt(question_with_budget(p.question, prompt_budget), tokenizer) for p in problems]
    completions = sampler.generate(prompts, params, progress=progress)
    responses = [[_response(tokenizer, c.token_ids, c.finish_reason) for c in row] for row in completions]
    if force_answer:
        _force_answers(sampler, tokenizer, prompts, completions, responses, params, context_length)
    return responses


def _response(tokenizer, token_ids: list[int], finish_reason: str) -> Response:
    return Response(tokenizer.decode(token_ids, skip_special_tokens=True), len(token_ids), finish_reason)


def _force_answers(sampler, tokenizer, prompts, completions, responses, params: SamplingParams,
                   context_length: int | None) -> None:
    """Replace every cut (``"length"``) response by itself + ``FORCE_ANSWER_TEXT`` + a short greedy answer."""
    suffix = tokenizer(FORCE_ANSWER_TEXT, add_special_tokens=False)["input_ids"]
    kept = {}  # (i, j) -> the cut response's tokens that leave room for the forced answer
    for i, row in enumerate(completions):
        room = None if context_length is None else context_length - len(prompts[i]) - len(suffix) - FORCE_ANSWER_TOKENS
        for j, completion in enumerate(row):
            if completion.finish_reason == "length" and (room is None or room > 0):
                kept[i, j] = completion.token_ids[:room]
    if not kept:
        return
    continuations = [prompts[i] + cut_ids + suffix for (i, _), cut_ids in kept.items()]
    answer_params = SamplingParams(n=1, temperature=0.0, max_tokens=FORCE_ANSWER_TOKENS,
                                   stop_token_ids=params.stop_token_ids, seed=params.seed)
    answers = sampler.generate(continuations, answer_params)
    for ((i, j), cut_ids), [answer] in zip(kept.items(), answers):
        text = tokenizer.decode(cut_ids, skip_special_tokens=True) + FORCE_ANSWER_TEXT
        answer_text = tokenizer.decode(answer.token_ids, skip_special_tokens=True)
        responses[i][j] = Response(text + close_braces(answer_text), len(cut_ids) + len(suffix) + len(answer.token_ids), "length")


def close_braces(answer_text: str) -> str:
    """The forced answer up to where the opened ``\\boxed{`` closes, closing it when the model did not."""
    depth = 1
    for index, char in enumerate(answer_text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return answer_text[: index + 1]
    return answer_text + "}" * depth
