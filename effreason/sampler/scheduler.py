"""Continuous batching: which sequences run in the next step, and preemption when blocks run out."""

from __future__ import annotations

import collections
import dataclasses

from effreason.sampler.block_manager import BlockManager
from effreason.sampler.sequence import Sequence, Status


@dataclasses.dataclass(slots=True)
class ScheduledBatch:
    """A prefill of whole sequences, or ``num_steps`` one-token decode steps of running ones."""

    seqs: list[Sequence]
    is_prefill: bool
    copies: list[tuple[int, int]]  # (source block, destination block) copy-on-write pairs
    num_steps: int = 1


class Scheduler:
    """Prefill-first continuous batching in the style of vLLM / nano-vllm.

    Waiting sequences are admitted (prefilled) whenever sequence slots and KV blocks allow;
    otherwise all running sequences decode one token. When a running sequence needs a block
    and none is free, the most recently admitted sequence is preempted: its blocks are freed
    and it waits to be recomputed (prefill over its prompt and the tokens sampled so far).
    """

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: collections.deque[Sequence] = collections.deque()
        self.num_preemptions = 0
        self.num_finished = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, decode_steps: int = 1) -> ScheduledBatch:
        """The next step: a prefill batch when a waiting sequence fits, else a decode batch of
        ``decode_steps`` steps when blocks for all of them are free, else of one step."""
        prefill = self._admit_waiting()
        if prefill:
            return ScheduledBatch(prefill, True, [])
        return self._schedule_decode(decode_steps)

    def _fits(self, seq: Sequence, batch_tokens: int, batch_fanout: int) -> bool:
        manager = self.block_manager
        num_seqs = len(self.running) + batch_fanout + seq.fanout
        if num_seqs > self.max_num_seqs:
            return False
        if batch_tokens and batch_tokens + seq.num_tokens > self.max_num_batched_tokens:
            return False
        # keep one spare block per sequence that may soon grow, unless nothing else runs
        reserve = len(self.running) + batch_fanout + seq.fanout if (self.running or batch_fanout) else 0
        return manager.blocks_for(seq.num_tokens) + reserve <= manager.num_free

    def _admit_waiting(self) -> list[Sequence]:
        batch, batch_tokens, batch_fanout = [], 0, 0
        while self.waiting and self._fits(self.waiting[0], batch_tokens, batch_fanout):
            seq = self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = Status.RUNNING
            batch.append(seq)
            batch_tokens += seq.num_tokens
            batch_fanout += seq.fanout
        return batch

    def _schedule_decode(self, num_steps: int) -> ScheduledBatch:
        manager = self.block_manager
        needs = [manager.blocks_to_append(seq, num_steps) for seq in self.running]
        if sum(needs) <= manager.num_free:  # the common case: every sequence grows, nobody is preempted
            copies = [manager.prepare_append(seq, num_steps) for seq, need in zip(self.running, needs) if need]
            return ScheduledBatch(list(self.running), False, [copy for copy in copies if copy], num_steps)
        if num_steps > 1:
            return self._schedule_decode(1)
        batch, copies = [], []
        while self.running:
            seq = self.running.popleft()
            needed = manager.blocks_to_append(seq)
            while needed > manager.num_free and self.running:
                self._preempt(self.running.pop())
            if needed <= manager.num_free:
                copy = manager.prepare_append(seq) if needed else None
                if copy is not None:
                    copies.append(copy)
                batch.append(seq)
            elif batch:
                self._preempt(seq)
            else:
                self.finish(seq, "length")  # alone and the whole cache is full: it cannot grow
        self.running.extend(batch)
        return ScheduledBatch(batch, False, copies)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def start_running(self, seqs: list[Sequence]) -> None:
        """Sequences that finished their prefill (forked children included) join the decode set."""
        self.running.extend(seqs)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark ``seq`` finished with ``reason`` and free its blocks (the caller drops it from ``running``)."""
        seq.finish_reason = reason
        seq.status = Status.FINISHED
        self.block_manager.free(seq)
        self.num_finished += 1

    def drop_finished(self) -> None:
        if any(seq.status is Status.FINISHED for seq in self.running):
            self.running = collections.deque(s for s in self.running if s.status is not Status.FINISHED)
