"""``Sampler``: k completions per prompt from a Hugging Face causal LM with a paged KV cache.

    sampler = Sampler(model)                       # the trainer's own model, no weight copy
    results = sampler.generate(prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=1024,
                                                          stop_token_ids=(eos,), seed=step))
    results[i][j].token_ids, .logprobs, .trainer_logprobs, .finish_reason

The engine is the host side: which sequences run (``scheduler.py``, ``block_manager.py``) and what becomes
of the tokens drawn for them; ``model_runner.py`` runs the model on the device. Each scheduling round is a
prefill (new or preempted sequences) or up to ``DECODE_WINDOW`` one-token decode steps of every running
sequence (continuous batching). A prompt is prefilled once and forked into its ``n`` samples, which share
its KV blocks. Full prompt blocks already in the prefix cache (shared by earlier prompts, in this call or an
earlier one with the same weights) are not recomputed; a change of the weights empties that cache
(``weight_updates.py``).
"""

from __future__ import annotations

import array

import torch

from effreason.sampler import attention
from effreason.sampler.block_manager import BlockManager
from effreason.sampler.model_runner import ModelRunner
from effreason.sampler.models import paged_model
from effreason.sampler.params import SamplingParams, per_prompt_params
from effreason.sampler.sampling import stream_keys
from effreason.sampler.scheduler import ScheduledBatch, Scheduler
from effreason.sampler.sequence import Completion, Sequence
from effreason.sampler.weight_updates import WeightUpdates

# Decode steps per scheduling round: the blocks of all of them are taken up front and the sampled tokens
# stay on the device, so the host's per-sequence bookkeeping (stop tokens, lengths, blocks) runs once per
# round. A sequence that draws a stop token mid-round costs the round's remaining steps of its row (tokens
# drawn past its end are dropped).
DECODE_WINDOW = 8
MAX_SEED = 2**62  # a seed drawn for ``seed=None`` is uniform in [0, MAX_SEED)
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


def _check_positive(name: str, value, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Sampler:
    """Paged-KV sampler over ``model``'s own parameters (an optimizer step is seen by the next call).

    ``model`` is a Hugging Face causal LM of a family in ``effreason.sampler.models.FAMILIES`` (by its config's
    ``model_type``: llama, qwen2, qwen3).

    * ``block_size``: tokens per KV block (a power of two).
    * ``max_num_seqs``: most sequences decoded together.
    * ``max_num_batched_tokens``: most prompt tokens in one prefill step (default 8192).
    * ``kv_cache_tokens``: KV-cache capacity in tokens; default: on CUDA ``kv_cache_memory_fraction``
      of the free GPU memory at the first ``generate``, on CPU 65536 tokens. Allocated once and
      reused by every ``generate`` while the model's device and dtype stay the same (or until ``release``).
    * ``cuda_graphs``: capture the CUDA decode step for bucketed batch sizes (CUDA kernels only).
    * ``attention_backend``: the paged decode attention, one of ``attention.DECODE_BACKENDS``
      (``"flash"``, ``"triton"``, ``"native"`` (CPU), ``"torch"``); default the fastest usable one. With
      ``"flash"`` or ``"triton"`` the layers' small ops and the draws run as Triton kernels too
      (``layers.uses_triton``). One that is unusable on the model's device is a ``ValueError`` at the first
      ``generate``.
    * ``paged_prefill``: prefill attention as one Triton kernel launch per layer over the paged cache
      (``effreason.kernels.paged_prefill``: every prompt, cached prefixes read in place) instead of flash-attn's
      varlen kernel or SDPA calls. Off by default: tested under the Triton interpreter, not yet run or timed on
      a GPU. Needs Triton on the model's device (else ``ValueError`` at the first ``generate``).
    * ``prefix_caching``: reuse the K/V of full prompt blocks whose tokens (and all tokens before them)
      were prefilled before, across prompts and ``generate`` calls, until the weights change: an optimizer
      step, ``load_state_dict`` or a replaced parameter is seen; any other in-place change of the weights
      must be announced with ``weights_changed()``.

    After each ``generate``, ``last_stats`` holds ``peak_blocks`` (KV blocks in use at the peak),
    ``peak_unshared_blocks`` (what the running sequences would hold without prompt sharing),
    ``preemptions`` and ``cached_prompt_tokens`` (prefill tokens served from the prefix cache).
    """

    def __init__(self, model: torch.nn.Module, *, block_size: int = 16, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS, kv_cache_tokens: int | None = None,
                 kv_cache_memory_fraction: float = 0.3, cuda_graphs: bool = True, prefix_caching: bool = True,
                 attention_backend: str | None = None, paged_prefill: bool = False):
        _check_positive("block_size", block_size)
        if block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        _check_positive("max_num_seqs", max_num_seqs)
        _check_positive("max_num_batched_tokens", max_num_batched_tokens)
        _check_positive("kv_cache_tokens", kv_cache_tokens, allow_none=True)
        if not 0.0 < kv_cache_memory_fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {kv_cache_memory_fraction!r}")
        if attention_backend is not None and attention_backend not in attention.DECODE_BACKENDS:
            raise ValueError(f"attention_backend must be one of {attention.DECODE_BACKENDS} or None, "
                             f"got {attention_backend!r}")
        if not isinstance(paged_prefill, bool):
            raise ValueError(f"paged_prefill must be a bool, got {paged_prefill!r}")
        self.model = paged_model(model)
        self.runner = ModelRunner(self.model, block_size=block_size, max_num_seqs=max_num_seqs,
                                  kv_cache_tokens=kv_cache_tokens, kv_cache_memory_fraction=kv_cache_memory_fraction,
                                  cuda_graphs=cuda_graphs, attention_backend=attention_backend,
                                  paged_prefill=paged_prefill)
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix_caching = prefix_caching
        self.block_manager: BlockManager | None = None
        self.weight_updates = WeightUpdates(model)
        self.last_stats: dict = {}

    def release(self) -> None:
        """Free the KV cache, the decode graphs and the references to the model's weights; the next ``generate``
        binds the weights and allocates the cache again (a trainer frees them between rollout and update)."""
        self.runner.release()
        self.block_manager = None

    def weights_changed(self) -> None:
        """Announce an in-place change of the model's weights that no optimizer step or ``load_state_dict`` made
        (e.g. ``p.data.copy_(...)``): the next ``generate`` recomputes every prompt."""
        self.weight_updates.mark_changed()

    def _reset_blocks(self, new_cache: bool) -> None:
        """Fresh blocks for a new cache or after an interrupted call; forget cached prefixes when the weights
        changed."""
        manager = self.block_manager
        if new_cache or manager.in_use:
            self.block_manager = BlockManager(self.runner.num_blocks, self.block_size, self.prefix_caching)
        if self.weight_updates.changed(self.model.weights()):
            self.block_manager.clear_prefix_cache()

    # ----------------------------------------------------------------- generate
    def _check_prompts(self, prompts) -> None:
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
        vocab = self.model.vocab_size
        capacity = self.runner.num_blocks * self.block_size
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, (list, tuple)) or not prompt:
                raise ValueError(f"prompts[{index}] must be a non-empty list of token ids")
            if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
                raise ValueError(f"prompts[{index}] must hold ints in [0, {vocab})")
            if len(prompt) >= self.model.max_model_len:
                raise ValueError(f"prompts[{index}] has {len(prompt)} tokens: no room left in the model's "
                                 f"context of {self.model.max_model_len}")
            if len(prompt) > capacity:
                raise ValueError(f"prompts[{index}] has {len(prompt)} tokens, more than the whole KV cache "
                                 f"({capacity} tokens); pass a larger kv_cache_tokens")

    def _make_sequences(self, prompts, params: SamplingParams) -> list[Sequence]:
        seqs, chunk = [], self.max_num_seqs
        for index, prompt in enumerate(prompts):
            for first in range(0, params.n, chunk):
                samples = list(range(first, min(params.n, first + chunk)))
                seqs.append(Sequence(len(seqs), index, list(prompt), samples))
        return seqs

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], *,
                 progress: bool = False) -> list[list[Completion]]:
        """``params.n`` completions of every prompt: ``result[i][j]`` is sample ``j`` of ``prompts[i]``.

        Token ``t`` of a completion is drawn from ``softmax(logits_t / T)`` truncated to top-k / top-p
        (``sampling.sample``), with the Gumbel noise of stream ``(seed, i, j)``; ``Completion``
        documents both returned log-probs. ``params``: one ``SamplingParams`` for every prompt, or a list of
        one per prompt differing only in ``max_tokens`` and ``min_tokens`` (``params.per_prompt_params``).
        """
        self._reset_blocks(self.runner.prepare())
        self._check_prompts(prompts)
        prompt_params = per_prompt_params(params, len(prompts))
        if not prompts:
            return []
        longest = max(len(prompt) + own.max_tokens for prompt, own in zip(prompts, prompt_params))
        self.runner.prepare_positions(min(longest, self.model.max_model_len))
        params = prompt_params[0]  # the draw's settings, shared by every prompt
        seed = params.seed if params.seed is not None else int(torch.randint(0, MAX_SEED, ()).item())
        prompt_index = torch.arange(len(prompts))[:, None].expand(-1, params.n)
        sample_index = torch.arange(params.n)[None, :].expand(len(prompts), -1)
        keys = stream_keys(seed, prompt_index, sample_index).tolist()  # keys[i][j]
        run = _Run(self, prompt_params, keys, progress, len(prompts) * params.n)
        for seq in self._make_sequences(prompts, params):
            run.register(seq)
            run.scheduler.add(seq)
        run.loop()
        return run.results


class _Run:
    """State of one ``generate`` call: scheduler, sequences and the bookkeeping of the tokens drawn for them."""

    def __init__(self, sampler: Sampler, prompt_params: list[SamplingParams], keys: list[list[int]], progress: bool,
                 total: int):
        self.runner = sampler.runner
        self.sampler = sampler
        self.max_model_len = sampler.model.max_model_len
        self.params = params = prompt_params[0]
        self.max_tokens = [own.max_tokens for own in prompt_params]  # per prompt
        self.min_tokens = [own.min_tokens for own in prompt_params]
        self.keys = keys
        self.stop_ids = frozenset(params.stop_token_ids)
        self.block_manager = sampler.block_manager
        self.scheduler = Scheduler(self.block_manager, sampler.max_num_seqs, sampler.max_num_batched_tokens)
        self.results: list[list[Completion | None]] = [[None] * params.n for _ in keys]
        self.owners: list[Sequence] = []
        self.next_id = 0
        self.peak_blocks = 0
        self.peak_unshared_blocks = 0
        self.cached_prompt_tokens = 0
        self.bar = self._progress_bar(total) if progress else None

    @staticmethod
    def _progress_bar(total: int):
        from tqdm.auto import tqdm
        return tqdm(total=total, desc="sampling", unit="completion")

    def register(self, seq: Sequence) -> None:
        self.next_id = max(self.next_id, seq.seq_id + 1)
        if seq.fanout == 1:
            self.owners.append(seq)

    def loop(self) -> None:
        scheduler = self.scheduler
        while scheduler.has_work():
            batch = scheduler.schedule(self._decode_window())
            self._track_memory()
            if batch.seqs:
                self._step(batch)
            scheduler.drop_finished()
            if self.bar is not None:
                self.bar.update(scheduler.num_finished - self.bar.n)
        for seq in self.owners:
            self.results[seq.prompt_index][seq.sample_indices[0]] = seq.completion()
        if self.bar is not None:
            self.bar.close()
        self.sampler.last_stats = {"peak_blocks": self.peak_blocks, "peak_unshared_blocks": self.peak_unshared_blocks,
                                   "preemptions": scheduler.num_preemptions,
                                   "cached_prompt_tokens": self.cached_prompt_tokens}

    def _decode_window(self) -> int:
        """Decode steps every running sequence can take before its length limit, at most ``DECODE_WINDOW``."""
        max_tokens, max_len = self.max_tokens, self.max_model_len
        room = min((min(max_tokens[seq.prompt_index] - seq.num_completion_tokens, max_len - seq.num_tokens)
                    for seq in self.scheduler.running), default=1)
        return max(1, min(DECODE_WINDOW, room))

    def _track_memory(self) -> None:
        """Peak blocks in use, and what they would be if no block were shared (each sequence its own)."""
        manager = self.block_manager
        self.peak_blocks = max(self.peak_blocks, manager.num_blocks - manager.num_free)
        unshared = sum(len(seq.block_table) for seq in self.scheduler.running)
        self.peak_unshared_blocks = max(self.peak_unshared_blocks, unshared)

    # ----------------------------------------------------------------- one step
    def _step(self, batch: ScheduledBatch) -> None:
        if batch.copies:
            self.runner.copy_blocks(batch.copies)
        if batch.is_prefill:
            self.cached_prompt_tokens += sum(seq.num_cached_tokens for seq in batch.seqs)
            rows = [(seq, j) for seq in batch.seqs for j in seq.sample_indices]
            drawn = self.runner.prefill(batch.seqs, self._streams(rows), self.params,
                                       self._min_tokens([seq for seq, _ in rows]))
            self._fork_prefilled(batch.seqs, drawn)
        else:
            streams = self._streams([(seq, seq.sample_indices[0]) for seq in batch.seqs])
            drawn = self.runner.decode(batch.seqs, batch.num_steps, streams, self.params, self._min_tokens(batch.seqs))
            for seq, tokens, logprobs, trainer_logprobs in zip(batch.seqs, *drawn):
                self._take(seq, tokens, logprobs, trainer_logprobs)

    def _streams(self, rows: list[tuple[Sequence, int]]) -> array.array:
        """int64 stream key (prompt, sample index) of each row, then each row's step (tokens sampled so far)."""
        keys = self.keys
        stream_keys = array.array("q", [keys[seq.prompt_index][j] for seq, j in rows])
        return stream_keys + array.array("q", [seq.num_completion_tokens for seq, _ in rows])

    def _min_tokens(self, seqs: list[Sequence]) -> array.array | None:
        """int64 ``min_tokens`` of each row's prompt (``seqs``: the sequence of each row), or None when no row can
        draw a stop token too early (no stop tokens, or every row past its minimum)."""
        if not self.stop_ids:
            return None
        floors = array.array("q", [self.min_tokens[seq.prompt_index] for seq in seqs])
        if all(seq.num_completion_tokens >= floor for seq, floor in zip(seqs, floors)):
            return None
        return floors

    # ----------------------------------------------------------------- bookkeeping
    def _fork_prefilled(self, seqs: list[Sequence], drawn: list[list[float]]) -> None:
        """Give each prefilled sequence its sampled token; a fresh prompt becomes its n children."""
        row, ready = 0, []
        for seq in seqs:
            if seq.fanout == 1:
                children = [seq]
            else:
                children = [seq.fork(self.next_id + j, j) for j in range(seq.fanout)]
                self.next_id += seq.fanout
                for child in children:
                    self.block_manager.share(child)
                    self.owners.append(child)
                self.block_manager.free(seq)
            for child in children:
                self._take(child, [int(drawn[0][row])], [drawn[1][row]], [drawn[2][row]])
                row += 1
            ready.extend(children)
        self.scheduler.start_running(ready)

    def _take(self, seq: Sequence, tokens: list[int], logprobs: list[float], trainer_logprobs: list[float]) -> None:
        """Append sampled tokens to ``seq`` up to its end: finish it at a stop token (kept) or its length
        limit; tokens drawn past a stop token are dropped."""
        count, reason = len(tokens), None
        if self.stop_ids and not self.stop_ids.isdisjoint(tokens):
            count, reason = next(i for i, token in enumerate(tokens) if token in self.stop_ids) + 1, "stop"
        seq.extend(tokens[:count], logprobs[:count], trainer_logprobs[:count])
        if reason is None and (seq.num_completion_tokens >= self.max_tokens[seq.prompt_index]
                               or seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)
