"""``Sampler``: k completions per prompt from a Hugging Face Qwen2 / Llama model with a paged KV cache.

    sampler = Sampler(model)                       # the trainer's own model, no weight copy
    results = sampler.generate(prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=1024,
                                                          stop_token_ids=(eos,), seed=step))
    results[i][j].token_ids, .logprobs, .trainer_logprobs, .finish_reason

Each scheduling round is a prefill (new or preempted sequences) or up to ``DECODE_WINDOW`` one-token
decode steps of every running sequence (continuous batching, ``scheduler.py``). A prompt is
prefilled once and forked into its ``n`` samples, which share its KV blocks (``block_manager.py``).
Full prompt blocks already in the prefix cache (shared by earlier prompts, in this call or an
earlier one with the same weights) are not recomputed; a change to any parameter empties that cache.
Model, attention and sampling run without host syncs; the one device-to-host copy per round is the
sampled tokens and their log-probs, which the scheduler needs (stop tokens, lengths). On CUDA the
decode forward is replayed from a CUDA graph (``cuda_graph.py``); on the CPU in float32 a round with a
greedy or untruncated draw is one native op (``PagedModel.decode_round``).
"""

from __future__ import annotations

import array
import math
import mmap
import sys

import torch

from effreason.sampler import attention
from effreason.sampler.block_manager import BlockManager
from effreason.sampler.cuda_graph import DecodeGraphs
from effreason.sampler.model import PagedModel
from effreason.sampler.params import SamplingParams
from effreason.sampler.sampling import sample, stream_keys
from effreason.sampler.scheduler import ScheduledBatch, Scheduler
from effreason.sampler.sequence import Completion, Sequence

CPU_DEFAULT_KV_TOKENS = 65536
# Decode steps per scheduling round: the blocks of all of them are taken up front and the sampled
# tokens stay on the device, so the host's per-sequence bookkeeping (stop tokens, lengths, blocks) runs
# once per round. A sequence that draws a stop token mid-round costs the round's remaining steps of its
# row (tokens drawn past its end are dropped). On the 2-core CPU VM the host work was ~0.6 ms of a
# ~8 ms step at 128 sequences (bench/RESULTS.md).
DECODE_WINDOW = 8
HUGE_PAGE_BYTES = 2 << 20


def _int64_rows(values: array.array, num_columns: int, device: torch.device) -> torch.Tensor:
    """The int64 ``array`` ``values`` as a (rows, num_columns) tensor on ``device``, one host-to-device copy."""
    return torch.frombuffer(values, dtype=torch.int64).view(-1, num_columns).to(device)


def cpu_zeros_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in memory the kernel may back with 2 MiB transparent huge pages (Linux).

    Decode attention reads every sequence's K/V tiles scattered over the whole cache; with 4 KiB pages
    nearly each tile is a TLB miss, a two-level page walk on a VM. ``madvise(MADV_HUGEPAGE)`` on a private
    anonymous mapping asks for huge pages even where THP is "madvise" only (measured on the 2-core CI VM,
    one process, interleaved: 18-24% less time in the decode attention with blocks scattered over the
    cache, 1-2% of the whole bench where they stay compact; bench/RESULTS.md). Elsewhere, or for less
    than a huge page, plain ``torch.zeros``. The tensor keeps the mapping alive.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE") or nbytes < HUGE_PAGE_BYTES:
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled
    region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE_BYTES  # huge pages cover 2 MiB-aligned ranges
    return raw[start:start + nbytes].view(dtype).view(shape)


def _check_positive(name: str, value, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Sampler:
    """Paged-KV sampler over ``model``'s own parameters (an optimizer step is seen by the next call).

    * ``block_size``: tokens per KV block (a power of two).
    * ``max_num_seqs``: most sequences decoded together.
    * ``max_num_batched_tokens``: most prompt tokens in one prefill step (default 8192).
    * ``kv_cache_tokens``: KV-cache capacity in tokens; default: on CUDA ``kv_cache_memory_fraction``
      of the free GPU memory at the first ``generate``, on CPU 65536 tokens. Allocated once and
      reused by every ``generate`` while the model's device and dtype stay the same.
    * ``cuda_graphs``: capture the CUDA decode step for bucketed batch sizes (CUDA kernels only).
    * ``attention_backend``: the paged decode attention, one of ``attention.DECODE_BACKENDS``
      (``"flash"``, ``"triton"``, ``"native"``, ``"torch"``); default the fastest usable one. One
      that is unusable on the model's device is a ``ValueError`` at the first ``generate``.
    * ``prefix_caching``: reuse the K/V of full prompt blocks whose tokens (and all tokens before them)
      were prefilled before, across prompts and ``generate`` calls, until a parameter changes
      (in place, as an optimizer step does, or replaced).

    After each ``generate``, ``last_stats`` holds ``peak_blocks`` (KV blocks in use at the peak),
    ``peak_unshared_blocks`` (what the running sequences would hold without prompt sharing),
    ``preemptions`` and ``cached_prompt_tokens`` (prefill tokens served from the prefix cache).
    """

    def __init__(self, model: torch.nn.Module, *, block_size: int = 16, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, kv_cache_tokens: int | None = None,
                 kv_cache_memory_fraction: float = 0.3, cuda_graphs: bool = True, prefix_caching: bool = True,
                 attention_backend: str | None = None):
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
        self.model = PagedModel(model)
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_cache_tokens = kv_cache_tokens
        self.kv_cache_memory_fraction = kv_cache_memory_fraction
        self.use_cuda_graphs = cuda_graphs
        self.prefix_caching = prefix_caching
        self.attention_backend = attention_backend
        self.kv_cache: torch.Tensor | None = None
        self.block_manager: BlockManager | None = None
        self.cached_weights_version: tuple | None = None
        self.num_blocks = 0
        self.backend = "torch"
        self.graphs: DecodeGraphs | None = None
        self.last_stats: dict = {}

    # ----------------------------------------------------------------- KV cache
    def _bytes_per_token(self) -> int:
        model = self.model
        element = torch.empty(0, dtype=model.dtype).element_size()
        return 2 * model.num_layers * model.num_kv_heads * model.head_dim * element

    def _capacity_tokens(self) -> int:
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        if self.model.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.model.device)
            return int(free * self.kv_cache_memory_fraction) // self._bytes_per_token()
        return CPU_DEFAULT_KV_TOKENS

    def _ensure_kv_cache(self) -> None:
        """Allocate the cache (layers, 2, num_blocks + 1, Hkv, block_size, D) unless it still fits the model.

        The extra last block is scratch: padded CUDA-graph rows write there.
        """
        model = self.model
        cache = self.kv_cache
        if cache is not None and cache.device == model.device and cache.dtype == model.dtype:
            return
        self.kv_cache = None
        self.backend = self._choose_backend()
        num_blocks = max(1, self._capacity_tokens() // self.block_size)
        shape = (model.num_layers, 2, num_blocks + 1, model.num_kv_heads, self.block_size, model.head_dim)
        if model.device.type == "cpu":
            self.kv_cache = cpu_zeros_on_huge_pages(shape, model.dtype)
        else:
            self.kv_cache = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.num_blocks = num_blocks
        self.block_manager = BlockManager(num_blocks, self.block_size, self.prefix_caching)
        graphs_ok = self.use_cuda_graphs and model.device.type == "cuda" and self.backend != "torch"
        self.graphs = DecodeGraphs(self.model, self.kv_cache, self.block_size, self.max_num_seqs,
                                   self.backend) if graphs_ok else None

    def _choose_backend(self) -> str:
        """``attention_backend`` when usable for the model (else ValueError), default the fastest usable."""
        model = self.model
        usable = attention.usable_decode_backends(model.device, model.dtype, self.block_size)
        if self.attention_backend is None:
            return usable[0]
        if self.attention_backend not in usable:
            raise ValueError(f"attention_backend {self.attention_backend!r} is not usable for a "
                             f"{model.dtype} model on {model.device} with block_size {self.block_size}; "
                             f"usable: {usable}")
        return self.attention_backend

    def _reset_blocks(self) -> None:
        """Free every block left by an interrupted call; forget cached prefixes when a parameter changed."""
        if self.block_manager.in_use:
            self.block_manager = BlockManager(self.num_blocks, self.block_size, self.prefix_caching)
        version = self.model.weights_version()
        if version is None or version != self.cached_weights_version:
            self.block_manager.clear_prefix_cache()
            self.cached_weights_version = version

    # ----------------------------------------------------------------- generate
    def _check_prompts(self, prompts) -> None:
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
        vocab = self.model.hf_model.config.vocab_size
        capacity = self.num_blocks * self.block_size
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
    def generate(self, prompts: list[list[int]], params: SamplingParams, *,
                 progress: bool = False) -> list[list[Completion]]:
        """``params.n`` completions of every prompt: ``result[i][j]`` is sample ``j`` of ``prompts[i]``.

        Token ``t`` of a completion is drawn from ``softmax(logits_t / T)`` truncated to top-k / top-p
        (``sampling.sample``), with the Gumbel noise of stream ``(seed, i, j)``; ``Completion``
        documents both returned log-probs.
        """
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        self._ensure_kv_cache()
        self._reset_blocks()
        self._check_prompts(prompts)
        if not prompts:
            return []
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        prompt_index = torch.arange(len(prompts))[:, None].expand(-1, params.n)
        sample_index = torch.arange(params.n)[None, :].expand(len(prompts), -1)
        keys = stream_keys(seed, prompt_index, sample_index).tolist()  # keys[i][j]
        longest = max(len(p) for p in prompts) + params.max_tokens
        self.model.rope_tables(min(longest, self.model.max_model_len))
        run = _Run(self, params, keys, progress, len(prompts) * params.n)
        for seq in self._make_sequences(prompts, params):
            run.register(seq)
            run.scheduler.add(seq)
        run.loop()
        return run.results

    def kv_bytes(self, num_blocks: int) -> int:
        """Bytes of ``num_blocks`` KV blocks over all layers."""
        return num_blocks * self.block_size * self._bytes_per_token()


class _Run:
    """State of one ``generate`` call: scheduler, sequences, step execution and bookkeeping."""

    def __init__(self, sampler: Sampler, params: SamplingParams, keys: list[list[int]], progress: bool,
                 total: int):
        self.sampler = sampler
        self.model = sampler.model
        self.params = params
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
        self.device = sampler.model.device
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
        max_tokens, max_len = self.params.max_tokens, self.model.max_model_len
        room = min((min(max_tokens - seq.num_completion_tokens, max_len - seq.num_tokens)
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
            self._copy_blocks(batch.copies)
        if batch.is_prefill:
            self._prefill_step(batch.seqs)
        else:
            self._decode_steps(batch.seqs, batch.num_steps)

    def _streams(self, rows: list[tuple[Sequence, int]]) -> torch.Tensor:
        """(2, rows) int64 on the device: each row's stream key (prompt, sample index) and its step (tokens
        sampled so far)."""
        keys = self.keys
        stream_keys = array.array("q", [keys[seq.prompt_index][j] for seq, j in rows])
        steps = array.array("q", [seq.num_completion_tokens for seq, _ in rows])
        return _int64_rows(stream_keys + steps, len(rows), self.device)

    def _prefill_step(self, seqs: list[Sequence]) -> None:
        logits, rows = self._prefill(seqs)
        streams = self._streams(rows)
        tokens, logprobs, trainer = sample(logits, self.params, streams[0], streams[1])
        self._fork_prefilled(seqs, torch.stack((tokens.double(), logprobs.double(), trainer.double())).cpu().tolist())

    def _decode_steps(self, seqs: list[Sequence], num_steps: int) -> None:
        """``num_steps`` decode steps of ``seqs`` (their blocks already taken), each step's tokens fed to
        the next on the device; then the tokens and their log-probs copied to the host (two copies, once per
        round) and each sequence's new tokens taken."""
        input_ids, positions, tables = self._decode_inputs(seqs)
        positions = positions + torch.arange(num_steps, device=self.device)[:, None]  # (steps, B), all at once
        slots = self._slots(tables.long().expand(num_steps, -1, -1), positions)
        context_lens = (positions + 1).to(torch.int32)
        streams = self._streams([(seq, seq.sample_indices[0]) for seq in seqs])
        if self._fused_round(len(seqs)):
            tokens, logprobs, trainer = self.model.decode_round(input_ids, positions, self.sampler.kv_cache, slots,
                                                                tables, context_lens, streams[0], streams[1],
                                                                self.params.temperature)
        else:
            tokens, logprobs, trainer = self._step_by_step(input_ids, positions, tables, slots, context_lens, streams)
        logprob_rows, trainer_rows = torch.stack((logprobs, trainer)).tolist()  # one copy for both: (2, B, steps)
        for seq, seq_tokens, seq_logprobs, seq_trainer in zip(seqs, tokens.tolist(), logprob_rows, trainer_rows):
            self._take(seq, seq_tokens, seq_logprobs, seq_trainer)

    def _fused_round(self, num_rows: int) -> bool:
        """Whether the round runs in one ``PagedModel.decode_round`` call: no CUDA graphs, a fused CPU decode step
        and a draw it makes (greedy or untruncated)."""
        params = self.params
        return ((params.greedy or not params.truncated) and self.sampler.graphs is None
                and self.model.fused_round(num_rows, self.sampler.backend))

    def _step_by_step(self, input_ids, positions, tables, slots, context_lens, streams):
        """The round's steps one forward and one ``sample`` each, tokens fed back on the device: (tokens, logprobs,
        trainer log-probs), each (B, steps)."""
        tokens, logprobs, trainer = [], [], []
        for step in range(positions.shape[0]):
            logits = self._decode(input_ids, positions[step], tables, slots[step], context_lens[step])
            token, logprob, trainer_logprob = sample(logits, self.params, streams[0], streams[1] + step)
            tokens.append(token)
            logprobs.append(logprob)
            trainer.append(trainer_logprob)
            input_ids = token
        return tuple(torch.stack(rows, 1) for rows in (tokens, logprobs, trainer))

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy on write: KV data of each source block into its destination, all layers."""
        cache = self.sampler.kv_cache
        source = torch.tensor([s for s, _ in copies], device=self.device)
        destination = torch.tensor([d for _, d in copies], device=self.device)
        cache.index_copy_(2, destination, cache.index_select(2, source))

    def _slots(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slot ``block * block_size + row`` of each position, given its block-table rows."""
        block_size = self.sampler.block_size
        return table.gather(-1, (positions // block_size)[..., None])[..., 0] * block_size + positions % block_size

    def _prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, list[tuple[Sequence, int]]]:
        """Forward of each sequence's tokens after its cached prefix; logits of its last token, once per sample."""
        device, model = self.device, self.model
        cached = [seq.num_cached_tokens for seq in seqs]
        self.cached_prompt_tokens += sum(cached)
        lengths = [seq.num_tokens - c for seq, c in zip(seqs, cached)]  # tokens computed now
        input_ids = torch.tensor([t for seq, c in zip(seqs, cached) for t in seq.token_ids[c:]], device=device)
        positions = torch.cat([torch.arange(c, seq.num_tokens, device=device) for seq, c in zip(seqs, cached)])
        tables = [torch.tensor(seq.block_table, device=device) for seq in seqs]
        slots = torch.cat([self._slots(t.expand(n, -1), torch.arange(c, c + n, device=device))
                           for t, c, n in zip(tables, cached, lengths)])
        ends = torch.tensor(lengths).cumsum(0)
        bounds = list(zip((ends - torch.tensor(lengths)).tolist(), ends.tolist()))
        meta = attention.AttentionMetadata(
            is_prefill=True, slot_mapping=slots,
            seq_bounds=bounds, cu_seqlens=torch.cat([ends.new_zeros(1), ends]).to(device, torch.int32),
            max_seqlen=max(lengths), prefix_lens=cached, prefix_tables=tables if any(cached) else None)
        hidden = model.forward(input_ids, positions, self.sampler.kv_cache, meta, self.sampler.backend)
        rows = [(seq, j) for seq in seqs for j in seq.sample_indices]
        last = torch.tensor([end - 1 for (_, end), seq in zip(bounds, seqs) for _ in seq.sample_indices], device=device)
        return model.logits(hidden.index_select(0, last)), rows

    def _decode_inputs(self, seqs: list[Sequence]):
        """Input ids (B,), positions (B,) and block tables (B, max blocks) int32 zero-padded, on the device.

        Built as raw int32 / int64 buffers (the tables are ``array``s): at 512 sequences 0.17 ms of
        host time where lists of Python ints took 0.70-0.76 ms (2-core CPU VM).
        """
        width = max(len(seq.block_table) for seq in seqs)
        padding, flat = array.array("i", bytes(4 * width)), array.array("i")
        for seq in seqs:
            flat += seq.block_table
            flat += padding[len(seq.block_table):]
        tables = torch.frombuffer(flat, dtype=torch.int32).view(len(seqs), width).to(self.device)
        input_ids = array.array("q", [seq.token_ids[-1] for seq in seqs])
        positions = array.array("q", [len(seq.token_ids) - 1 for seq in seqs])
        tokens = _int64_rows(input_ids + positions, len(seqs), self.device)
        return tokens[0], tokens[1], tables

    def _decode(self, input_ids: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor, slots: torch.Tensor,
                context_lens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of one decode step: ``input_ids`` (B,) at ``positions`` (B,) over ``tables``, K/V
        written at ``slots`` (B,), attending over ``context_lens`` (B,) int32 = positions + 1."""
        graphs = self.sampler.graphs
        if graphs is not None and graphs.fits(len(input_ids), tables.shape[1]):
            return self.model.logits(graphs.run(input_ids, positions, tables, slots, context_lens))
        model, block_size = self.model, self.sampler.block_size
        meta = attention.AttentionMetadata(
            is_prefill=False, slot_mapping=slots,
            block_tables=tables, context_lens=context_lens)
        if self.sampler.backend == "torch":
            meta.gather_index = attention.gather_index(tables, model.num_kv_heads)
            meta.padding_mask = attention.padding_mask(context_lens, model.num_kv_heads, tables.shape[1] * block_size)
        return model.forward(input_ids, positions, self.sampler.kv_cache, meta, self.sampler.backend, logits=True)

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
        if reason is None and (seq.num_completion_tokens >= self.params.max_tokens
                               or seq.num_tokens >= self.model.max_model_len):
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)
