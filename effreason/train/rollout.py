"""Rollouts: k completions per prompt from the live policy, with the log-probs PPO needs.

``RolloutEngine.generate(prompt_ids, params) -> list[list[Completion]]`` wraps the paged-KV
sampler (``effreason.sampler.Sampler``). The sampler reads the model's own parameters when they are
in the compute dtype (float32, or FSDP2's gathered parameters), so no weight sync is needed after an
optimizer step; with float32 master weights and a lower compute dtype each ``generate`` first casts
them into a copy (:class:`SamplingWeights`), in place from the second call on, so the copy keeps its
addresses and captured CUDA graphs stay valid. ``release_memory`` frees the copy and the KV cache after
each call instead, so the update that follows has that memory (the trainer does so when the memory plan
says they do not fit next to the update).
``backend="hf"`` serves the same interface through Hugging Face ``generate()`` (slower; a
cross-check of the sampler). A step's graded completions are a :class:`Rollout`, what every
training method updates from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch

from effreason.sampler import Completion, Sampler, SamplingParams

__all__ = ["Completion", "Rollout", "RolloutEngine", "SamplingParams"]


@dataclass
class Rollout:
    """One step's graded samples on this rank, the ``group_size`` samples of a prompt consecutive.

    prompts, responses: token ids per sample (S); trainer_logprobs, sampler_logprobs: per response
    token (the trainer's, at temperature T, and the sampler's own); correct: (S,) bool, right answer
    *and* ended by a stop token (the paper's rule); lengths: (S,) int64 response tokens; truncated:
    (S,) bool, hit the token limit; rewards: (S,) float32 rewards of ``--reward`` (set once scored).
    """

    prompts: list[list[int]]
    responses: list[list[int]]
    trainer_logprobs: list[list[float]]
    sampler_logprobs: list[list[float]]
    correct: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    group_size: int
    rewards: torch.Tensor | None = None

    def groups(self) -> list[slice]:
        """The samples of each prompt, in prompt order."""
        return [slice(start, start + self.group_size) for start in range(0, len(self.responses), self.group_size)]

    def select(self, groups: list[list[int]]) -> "Rollout":
        """The rollout of the given groups, each a list of sample indices (all lists of one length, the new group size)."""
        rows = [row for group in groups for row in group]
        sizes = {len(group) for group in groups}
        if len(sizes) > 1:
            raise ValueError(f"groups must all keep the same number of samples, got sizes {sorted(sizes)}")
        index = torch.tensor(rows, dtype=torch.int64)
        return Rollout(**{
            item.name: _take(getattr(self, item.name), rows, index) for item in fields(self) if item.name != "group_size"
        }, group_size=sizes.pop() if sizes else self.group_size)

    @staticmethod
    def concatenate(parts: list["Rollout"]) -> "Rollout":
        """The samples of ``parts`` (of one group size) one after the other."""
        if not parts or len({part.group_size for part in parts}) != 1:
            raise ValueError("parts must be a non-empty list of rollouts of one group size")
        joined = {}
        for item in fields(Rollout):
            values = [getattr(part, item.name) for part in parts]
            if item.name == "group_size":
                joined[item.name] = values[0]
            elif isinstance(values[0], torch.Tensor):
                joined[item.name] = torch.cat(values)
            elif values[0] is None:
                joined[item.name] = None
            else:
                joined[item.name] = [row for value in values for row in value]
        return Rollout(**joined)


def _take(value, rows: list[int], index: torch.Tensor):
    """``value`` (a per-sample list or tensor, or None) at ``rows``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index)
    return [value[row] for row in rows]


class SamplingWeights:
    """A ``dtype`` copy of ``model``'s parameters in a model of the same structure, for the sampler.

    ``model`` itself is the structure with its parameters replaced by meta-device placeholders (its
    buffers, such as the RoPE frequencies, are copied once); ``materialize`` casts the current
    parameters into it (tied parameters stay tied): into new tensors the first time and after
    ``release``, else in place (same tensors, same addresses). ``release`` puts the placeholders back.
    """

    def __init__(self, source: torch.nn.Module, dtype: torch.dtype):
        self.source = source
        self.dtype = dtype
        placeholders = {id(p): _frozen(self._placeholder(p)) for p in source.parameters()}
        self.model = copy.deepcopy(source, placeholders)

    def _placeholder(self, parameter: torch.Tensor) -> torch.Tensor:
        return torch.empty(parameter.shape, dtype=self.dtype, device="meta")

    @property
    def materialized(self) -> bool:
        """Whether the copy holds tensors (else meta placeholders)."""
        return next(self.model.parameters()).device.type != "meta"

    @torch.no_grad()
    def materialize(self) -> None:
        if not self.materialized:
            self._assign(lambda parameter: parameter.detach().to(self.dtype))
            return
        for copy_parameter, parameter in zip(self.model.parameters(), self.source.parameters(), strict=True):
            copy_parameter.copy_(parameter.detach())  # both iterate unique parameters in module order

    def release(self) -> None:
        self._assign(self._placeholder)

    def _assign(self, make) -> None:
        """Set every parameter of the copy to ``make(its source parameter)``, once per source parameter."""
        made = {}
        for source_module, module in zip(self.source.modules(), self.model.modules()):
            for name, parameter in source_module.named_parameters(recurse=False):
                if id(parameter) not in made:
                    made[id(parameter)] = _frozen(make(parameter))
                setattr(module, name, made[id(parameter)])


def _frozen(tensor: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor, requires_grad=False)


class RolloutEngine:
    """Generates completions from ``model`` (its live weights) in batches of ``max_batch_prompts`` prompts.

    ``weights_dtype``: the dtype the sampler computes in; a dtype other than the parameters' makes each
    ``generate`` sample from a :class:`SamplingWeights` copy, refreshed in place. ``kv_cache_tokens``: the
    sampler's KV-cache capacity (None: its default). ``release_memory``: free the KV cache and the weight
    copy after each ``generate``.
    """

    def __init__(self, model, *, pad_token_id: int, max_batch_prompts: int = 64, backend: str = "auto",
                 weights_dtype: torch.dtype | None = None, kv_cache_tokens: int | None = None,
                 release_memory: bool = False):
        if backend not in ("auto", "sampler", "hf"):
            raise ValueError(f"backend must be 'auto', 'sampler' or 'hf', got {backend!r}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch_prompts = max_batch_prompts
        parameter_dtype = next(model.parameters()).dtype
        copied = backend != "hf" and weights_dtype not in (None, parameter_dtype)
        self.weights = SamplingWeights(model, weights_dtype) if copied else None
        self.release_memory = release_memory
        sampled_model = self.weights.model if copied else model
        self.sampler = None if backend == "hf" else Sampler(sampled_model, kv_cache_tokens=kv_cache_tokens)

    @property
    def backend(self) -> str:
        return "paged-sampler" if self.sampler is not None else "hf-generate"

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams | list[SamplingParams], *,
                 progress: bool = False) -> list[list[Completion]]:
        """``params.n`` completions for every prompt, in prompt order (``progress``: the sampler's progress bar).

        ``params``: one ``SamplingParams``, or (paged sampler only) one per prompt (``Sampler.generate``)."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self.sampler is not None:
                return self._sample(prompt_ids, params, progress)
            if not isinstance(params, SamplingParams):
                raise ValueError("params: per-prompt SamplingParams need the paged sampler (rollout backend 'sampler')")
            results = []
            for start in range(0, len(prompt_ids), self.max_batch_prompts):
                chunk = prompt_ids[start:start + self.max_batch_prompts]
                results.extend(_hf_generate(self.model, chunk, params, self.pad_token_id, seed_offset=start))
            return results
        finally:
            self.model.train(was_training)

    def _sample(self, prompt_ids: list[list[int]], params: SamplingParams, progress: bool) -> list[list[Completion]]:
        """The sampler's completions, from the weight copy when there is one; with ``release_memory`` the
        copy and the KV cache freed afterwards."""
        if self.weights is not None:
            self.weights.materialize()
            self.sampler.weights_changed()  # the copy changed in place, or a new one may reuse old addresses
        try:
            return self.sampler.generate(prompt_ids, params, progress=progress)
        finally:
            if self.release_memory:
                self.sampler.release()
                if self.weights is not None:
                    self.weights.release()


def _left_padded(prompt_ids: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) input ids left-padded with ``pad_token_id`` and their attention mask."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids.to(device), attention.to(device)


def _hf_generate(model, prompt_ids, params: SamplingParams, pad_token_id: int, seed_offset: int) -> list[list[Completion]]:
    """The sampler's interface over ``model.generate`` (fallback path)."""
    device = next(model.parameters()).device
    input_ids, attention = _left_padded(prompt_ids, pad_token_id, device)
    options = dict(do_sample=not params.greedy, max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens,
                   num_return_sequences=params.n)
    if not params.greedy:
        options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((params.seed or 0) + seed_offset)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            eos_token_id=list(params.stop_token_ids) or None,
            pad_token_id=pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            output_scores=True,
            **options,
        )
    new_tokens = output.sequences[:, input_ids.shape[1]:]  # (B * n, T)
    raw = torch.stack(output.logits, dim=1).float()  # (B * n, T, V)
    processed = torch.stack(output.scores, dim=1).float()
    temperature = params.temperature if not params.greedy else 1.0
    trainer = torch.log_softmax(raw / temperature, dim=-1).gather(2, new_tokens.unsqueeze(2)).squeeze(2)
    sampled = torch.log_softmax(processed, dim=-1).gather(2, new_tokens.unsqueeze(2)).squeeze(2)
    stops = set(params.stop_token_ids)
    completions = [_truncate_at_stop(new_tokens[row].tolist(), sampled[row], trainer[row], stops) for row in range(new_tokens.shape[0])]
    return [completions[i * params.n:(i + 1) * params.n] for i in range(len(prompt_ids))]


def _truncate_at_stop(tokens: list[int], sampled: torch.Tensor, trainer: torch.Tensor, stops: set[int]) -> Completion:
    """Cut after the first stop token (kept); no stop token means the length limit ended it."""
    end = next((i + 1 for i, token in enumerate(tokens) if token in stops), None)
    finish = "stop" if end is not None else "length"
    end = end if end is not None else len(tokens)
    return Completion(tokens[:end], sampled[:end].tolist(), trainer[:end].tolist(), finish)
