"""The device side of the sampler: the paged model, its KV cache and decode graphs, and each step's forward and draw.

``ModelRunner`` takes the sequences the scheduler picked (their blocks already assigned) and returns the
tokens drawn for them, without host syncs until that one copy per step or round: a prefill's first tokens,
or a decode round of several steps, each step's tokens fed to the next on the device. On CUDA the decode
forward is replayed from a CUDA graph (``cuda_graph.py``).
"""

from __future__ import annotations

import array

import torch

from effreason import _backends
from effreason.sampler import attention, kv_cache
from effreason.sampler.attention import AttentionMetadata
from effreason.sampler.cuda_graph import DecodeGraphs
from effreason.sampler.models import PagedModel
from effreason.sampler.models.layers import uses_triton
from effreason.sampler.params import SamplingParams
from effreason.sampler.sampling import sample
from effreason.sampler.sequence import Sequence


def _int64_rows(values: array.array, num_columns: int, device: torch.device) -> torch.Tensor:
    """The int64 ``array`` ``values`` as a (rows, num_columns) tensor on ``device``, one host-to-device copy."""
    return torch.frombuffer(values, dtype=torch.int64).view(-1, num_columns).to(device)


def _min_tokens(values: array.array | None, device: torch.device) -> torch.Tensor | None:
    """The rows' int64 ``min_tokens`` (``sampling.sample``) on ``device``, or None."""
    return None if values is None else _int64_rows(values, len(values), device)[0]


class ModelRunner:
    """Runs ``model`` over a paged KV cache of ``block_size``-token blocks (``Sampler`` documents the options)."""

    def __init__(self, model: PagedModel, *, block_size: int, max_num_seqs: int, kv_cache_tokens: int | None,
                 kv_cache_memory_fraction: float, cuda_graphs: bool, attention_backend: str | None,
                 paged_prefill: bool):
        self.model = model
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.kv_cache_tokens = kv_cache_tokens
        self.kv_cache_memory_fraction = kv_cache_memory_fraction
        self.use_cuda_graphs = cuda_graphs
        self.attention_backend = attention_backend
        self.paged_prefill = paged_prefill
        self.kv_cache: torch.Tensor | None = None
        self.num_blocks = 0
        self.backend = "torch"
        self.triton = False  # the forward's small ops and the draw as Triton kernels (``layers.uses_triton``)
        self.graphs: DecodeGraphs | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----------------------------------------------------------------- before each generate
    def prepare(self) -> bool:
        """Bind the model's current weights; allocate the KV cache unless it still fits the model's device and
        dtype. Returns True when the cache is new (all blocks free)."""
        self.model.bind_weights()
        return self._ensure_kv_cache()

    def release(self) -> None:
        """Drop the KV cache, the decode graphs and the bound weights (``prepare`` makes them again)."""
        self.kv_cache = self.graphs = None
        self.num_blocks = 0
        self.model.unbind_weights()

    def prepare_positions(self, num_positions: int) -> None:
        """RoPE tables for positions ``< num_positions``; decode graphs dropped if a weight or table moved."""
        self.model.rope_tables(num_positions)
        if self.graphs is not None:
            self.graphs.check_weights()

    def _ensure_kv_cache(self) -> bool:
        model = self.model
        cache = self.kv_cache
        if cache is not None and cache.device == model.device and cache.dtype == model.dtype:
            return False
        self.kv_cache = self.graphs = None
        self.backend = self._choose_backend()
        self.triton = uses_triton(self.backend, model.device)
        if self.paged_prefill and not _backends.triton_usable_on(model.device):
            raise ValueError(f"paged_prefill needs Triton on the model's device {model.device} (a GPU, or "
                             f"TRITON_INTERPRET=1 on the CPU)")
        token_bytes = kv_cache.bytes_per_token(model.num_layers, model.num_kv_heads, model.head_dim, model.dtype)
        capacity = self.kv_cache_tokens or kv_cache.capacity_tokens(model.device, token_bytes,
                                                                    self.kv_cache_memory_fraction)
        self.num_blocks = max(1, capacity // self.block_size)
        self.kv_cache = kv_cache.allocate(model.num_layers, self.num_blocks, model.num_kv_heads, self.block_size,
                                          model.head_dim, model.dtype, model.device)
        if self.use_cuda_graphs and model.device.type == "cuda" and self.backend != "torch":
            self.graphs = DecodeGraphs(model, self.kv_cache, self.block_size, self.max_num_seqs, self.backend)
        return True

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

    # ----------------------------------------------------------------- steps
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy on write: KV data of each source block into its destination, all layers."""
        source = torch.tensor([s for s, _ in copies], device=self.device)
        destination = torch.tensor([d for _, d in copies], device=self.device)
        self.kv_cache.index_copy_(2, destination, self.kv_cache.index_select(2, source))

    def prefill(self, seqs: list[Sequence], streams: array.array, params: SamplingParams,
                min_tokens: array.array | None = None) -> list[list[float]]:
        """Forward of each sequence's tokens after its cached prefix, then a draw from its last token's logits
        once per sample index: (3, rows) host lists of tokens, log-probs and trainer log-probs, rows in the order
        of ``(seq, j) for seq in seqs for j in seq.sample_indices``.

        ``streams``: int64 stream keys of the rows, then their steps (tokens sampled so far); ``min_tokens``:
        int64 per row, or None (``sampling.sample``).
        """
        device, model = self.device, self.model
        cached = [seq.num_cached_tokens for seq in seqs]
        lengths = [seq.num_tokens - c for seq, c in zip(seqs, cached)]  # tokens computed now
        input_ids = torch.tensor([t for seq, c in zip(seqs, cached) for t in seq.token_ids[c:]], device=device)
        positions = torch.cat([torch.arange(c, seq.num_tokens, device=device) for seq, c in zip(seqs, cached)])
        tables = [torch.tensor(seq.block_table, device=device) for seq in seqs]
        slots = torch.cat([self._slots(t.expand(n, -1), torch.arange(c, c + n, device=device))
                           for t, c, n in zip(tables, cached, lengths)])
        ends = torch.tensor(lengths).cumsum(0)
        bounds = list(zip((ends - torch.tensor(lengths)).tolist(), ends.tolist()))
        meta = AttentionMetadata(
            is_prefill=True, slot_mapping=slots,
            seq_bounds=bounds, cu_seqlens=torch.cat([ends.new_zeros(1), ends]).to(device, torch.int32),
            max_seqlen=max(lengths), prefix_lens=cached, prefix_tables=tables if any(cached) else None)
        if self.paged_prefill:
            meta.block_tables = self._padded_tables(seqs)
            meta.context_lens = torch.tensor([seq.num_tokens for seq in seqs], dtype=torch.int32, device=device)
        hidden = model.forward(input_ids, positions, self.kv_cache, meta, self.backend)
        last = torch.tensor([end - 1 for (_, end), seq in zip(bounds, seqs) for _ in seq.sample_indices], device=device)
        keys, steps = _int64_rows(streams, len(last), device)
        logits = model.logits(hidden.index_select(0, last))
        tokens, logprobs, trainer = sample(logits, params, keys, steps, _min_tokens(min_tokens, device), self.triton)
        return torch.stack((tokens.double(), logprobs.double(), trainer.double())).cpu().tolist()

    def decode(self, seqs: list[Sequence], num_steps: int, streams: array.array, params: SamplingParams,
               min_tokens: array.array | None = None) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
        """``num_steps`` decode steps of ``seqs`` (blocks for all of them already taken), each step's tokens the
        next step's input on the device; then one copy of the tokens and one of both log-probs to the host.

        Returns tokens, log-probs and trainer log-probs, each a (B, steps) host list. ``streams``: the int64
        stream key of each sequence, then its step (tokens sampled so far); ``min_tokens``: int64 per sequence,
        or None (``sampling.sample``).
        """
        input_ids, positions, tables = self._decode_inputs(seqs)
        positions = positions + torch.arange(num_steps, device=self.device)[:, None]  # (steps, B), all at once
        slots = self._slots(tables.long().expand(num_steps, -1, -1), positions)
        context_lens = (positions + 1).to(torch.int32)
        keys, first_steps = _int64_rows(streams, len(seqs), self.device)
        floors = _min_tokens(min_tokens, self.device)
        tokens, logprobs, trainer = [], [], []
        for step in range(num_steps):
            logits = self._decode_logits(input_ids, positions[step], tables, slots[step], context_lens[step])
            input_ids, logprob, trainer_logprob = sample(logits, params, keys, first_steps + step, floors, self.triton)
            tokens.append(input_ids)
            logprobs.append(logprob)
            trainer.append(trainer_logprob)
        logprob_rows, trainer_rows = torch.stack((torch.stack(logprobs, 1), torch.stack(trainer, 1))).tolist()
        return torch.stack(tokens, 1).tolist(), logprob_rows, trainer_rows

    def _slots(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slot ``block * block_size + row`` of each position, given its block-table rows."""
        block_size = self.block_size
        return table.gather(-1, (positions // block_size)[..., None])[..., 0] * block_size + positions % block_size

    def _decode_inputs(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids (B,), positions (B,) and block tables (``_padded_tables``) on the device, each built as one raw
        buffer and copied once."""
        input_ids = array.array("q", [seq.token_ids[-1] for seq in seqs])
        positions = array.array("q", [len(seq.token_ids) - 1 for seq in seqs])
        tokens = _int64_rows(input_ids + positions, len(seqs), self.device)
        return tokens[0], tokens[1], self._padded_tables(seqs)

    def _padded_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        """The sequences' block tables (B, max blocks) int32 zero-padded, on the device: one raw buffer (the tables
        are ``array``s), copied once."""
        width = max(len(seq.block_table) for seq in seqs)
        padding, flat = array.array("i", bytes(4 * width)), array.array("i")
        for seq in seqs:
            flat += seq.block_table
            flat += padding[len(seq.block_table):]
        return torch.frombuffer(flat, dtype=torch.int32).view(len(seqs), width).to(self.device)

    def _decode_logits(self, input_ids: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor,
                       slots: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of one decode step: ``input_ids`` (B,) at ``positions`` (B,) over ``tables``, K/V
        written at ``slots`` (B,), attending over ``context_lens`` (B,) int32 = positions + 1."""
        model, graphs = self.model, self.graphs
        if graphs is not None and graphs.fits(len(input_ids), tables.shape[1]):
            return model.logits(graphs.run(input_ids, positions, tables, slots, context_lens))
        meta = AttentionMetadata(is_prefill=False, slot_mapping=slots, block_tables=tables, context_lens=context_lens)
        if self.backend == "torch":
            meta.gather_index = attention.gather_index(tables, model.num_kv_heads)
            meta.padding_mask = attention.padding_mask(context_lens, model.num_kv_heads,
                                                       tables.shape[1] * self.block_size)
        return model.logits(model.forward(input_ids, positions, self.kv_cache, meta, self.backend))
