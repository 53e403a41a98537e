"""CUDA-graph capture of the decode step for bucketed batch sizes (CUDA kernels only).

A graph replays the whole forward of one decode step (all layers, one launch) on static input
buffers. Batches are padded up to the next bucket; padded rows read one token of block 0 and write
their K/V into the cache's scratch block (the last one), so they never touch a live sequence.
Graphs hold the weights' (and RoPE tables') addresses: ``check_weights``, called before each ``generate``,
drops them when one was replaced, and they are captured again (in-place optimizer updates keep the addresses
and are seen by the next replay).
"""

from __future__ import annotations

import torch

from effreason.sampler import attention


SMALL_BUCKETS = (1, 2, 4, 8)  # batch sizes captured below BUCKET_STEP
BUCKET_STEP = 16  # from there on, every multiple of it up to max_num_seqs


def _buckets(max_num_seqs: int) -> list[int]:
    """The batch sizes captured: ``SMALL_BUCKETS``, then multiples of ``BUCKET_STEP``, all capped at max_num_seqs."""
    sizes = list(SMALL_BUCKETS) + list(range(BUCKET_STEP, max_num_seqs + BUCKET_STEP, BUCKET_STEP))
    return sorted({min(size, max_num_seqs) for size in sizes})


class DecodeGraphs:
    """Captured decode steps; ``run`` pads a batch to its bucket and replays that graph."""

    def __init__(self, model, kv_cache: torch.Tensor, block_size: int, max_num_seqs: int, backend: str):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.backend = backend
        self.buckets = _buckets(max_num_seqs)
        self.scratch_block = kv_cache.shape[2] - 1
        self.max_blocks = -(-model.max_model_len // block_size)
        device = kv_cache.device
        size = self.buckets[-1]
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.slots = torch.zeros(size, dtype=torch.long, device=device)
        self.tables = torch.zeros(size, self.max_blocks, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.weights_key: tuple[int, ...] | None = None

    def fits(self, batch_size: int, width: int) -> bool:
        return batch_size <= self.buckets[-1] and width <= self.max_blocks

    def check_weights(self) -> None:
        """Drop the captured graphs when a bound weight or a RoPE table has moved since they were captured."""
        tensors = [*self.model.rope_tables(1), *self.model.weights()]
        key = tuple(tensor.data_ptr() for tensor in tensors)
        if key != self.weights_key:
            self.graphs, self.pool, self.weights_key = {}, None, key

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        model = self.model

        def run() -> torch.Tensor:
            meta = attention.AttentionMetadata(
                is_prefill=False, block_tables=self.tables[:size], context_lens=self.context_lens[:size],
                slot_mapping=self.slots[:size])
            return model.forward(self.input_ids[:size], self.positions[:size], self.kv_cache, meta, self.backend)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()  # warm-up: compiles kernels outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            hidden = run()
        self.pool = graph.pool()
        return graph, hidden

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor, slots: torch.Tensor,
            context_lens: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, hidden) of one decode step, replayed from the bucket's graph: ``input_ids``
        (B,) at ``positions`` (B,) over ``tables``, K/V written at ``slots`` (B,), ``context_lens`` (B,) int32."""
        batch = input_ids.shape[0]
        size = next(b for b in self.buckets if b >= batch)
        self.input_ids.zero_()
        self.positions.zero_()
        self.tables.zero_()
        self.slots.fill_(self.scratch_block * self.block_size)
        self.input_ids[:batch] = input_ids
        self.positions[:batch] = positions
        self.tables[:batch, :tables.shape[1]] = tables
        self.slots[:batch] = slots
        self.context_lens.fill_(1)
        self.context_lens[:batch] = context_lens
        if size not in self.graphs:
            self.graphs[size] = self._capture(size)
        graph, hidden = self.graphs[size]
        graph.replay()
        return hidden[:batch]
