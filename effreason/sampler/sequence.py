"""One sequence being generated (``Sequence``) and what ``generate`` returns for it (``Completion``)."""

from __future__ import annotations

import array
import dataclasses
import enum


@dataclasses.dataclass(slots=True)
class Completion:
    """One sampled continuation of a prompt.

    * ``token_ids``: the new tokens (a stop token, when one ended it, is the last).
    * ``logprobs``: float32 ``log q(token)`` where ``q`` is the distribution the token was
      actually drawn from: ``softmax(logits / temperature)`` restricted to the top-k / top-p
      set and renormalised. Greedy decoding draws from a point mass, so it is 0.
    * ``trainer_logprobs``: float32 ``log_softmax(logits / temperature)[token]`` over the
      full vocabulary, no top-k/top-p truncation (temperature 1 for greedy): the behaviour
      log-prob a PPO trainer compares against its own forward pass.
    * ``finish_reason``: ``"stop"`` (a stop token) or ``"length"`` (``max_tokens`` or the
      model's context length).
    """

    token_ids: list[int]
    logprobs: list[float]
    trainer_logprobs: list[float]
    finish_reason: str


class Status(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


class Sequence:
    """Tokens, KV blocks and sampled log-probs of one sequence.

    A fresh prompt is one sequence with ``sample_indices = [0, ..., n-1]``: it is prefilled
    once, then forked into ``n`` children (one per sample index) sharing its KV blocks.
    """

    __slots__ = (
        "seq_id", "prompt_index", "sample_indices", "token_ids", "num_prompt_tokens",
        "block_table", "num_cached_tokens", "logprobs", "trainer_logprobs", "finish_reason", "status",
    )

    def __init__(self, seq_id: int, prompt_index: int, token_ids: list[int], sample_indices: list[int],
                 num_prompt_tokens: int | None = None):
        self.seq_id = seq_id
        self.prompt_index = prompt_index
        self.sample_indices = sample_indices
        self.token_ids = token_ids
        self.num_prompt_tokens = len(token_ids) if num_prompt_tokens is None else num_prompt_tokens
        self.block_table = array.array("i")  # int32 block ids: the decode step copies them out as raw bytes
        self.num_cached_tokens = 0  # leading tokens whose K/V the prefix cache held at allocation
        self.logprobs: list[float] = []
        self.trainer_logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.status = Status.WAITING

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def fanout(self) -> int:
        """How many sequences this one becomes after its prefill (n for a fresh prompt, else 1)."""
        return len(self.sample_indices)

    def fork(self, seq_id: int, position: int) -> "Sequence":
        """A child taking sample index ``sample_indices[position]``, sharing this sequence's block table."""
        child = Sequence(seq_id, self.prompt_index, list(self.token_ids), [self.sample_indices[position]],
                         self.num_prompt_tokens)
        child.block_table = array.array("i", self.block_table)
        return child

    def extend(self, tokens: list[int], logprobs: list[float], trainer_logprobs: list[float]) -> None:
        self.token_ids += tokens
        self.logprobs += logprobs
        self.trainer_logprobs += trainer_logprobs

    def completion(self) -> Completion:
        return Completion(self.token_ids[self.num_prompt_tokens:], self.logprobs, self.trainer_logprobs,
                          self.finish_reason)
