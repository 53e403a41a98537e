"""Fixed-size KV-cache blocks: a free list and reference counts (blocks are shared after a fork)."""

from __future__ import annotations

import collections

from effreason.sampler.sequence import Sequence


class BlockManager:
    """Hands out KV blocks of ``block_size`` token slots each.

    A sequence's ``block_table[i]`` holds its tokens ``i*block_size .. (i+1)*block_size - 1``.
    Forked children share their parent's blocks (reference count > 1); before a child writes
    into a shared block it gets a private copy (copy on write, ``prepare_append``).
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free_blocks = collections.deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens: ``ceil(num_tokens / block_size)``."""
        return -(-num_tokens // self.block_size)

    def _take(self) -> int:
        block = self.free_blocks.popleft()
        self.ref_counts[block] = 1
        return block

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` private blocks for all its tokens (before its prefill)."""
        seq.block_table = [self._take() for _ in range(self.blocks_for(seq.num_tokens))]

    def share(self, child: Sequence) -> None:
        """Count ``child`` as one more owner of every block in its (copied) block table."""
        for block in child.block_table:
            self.ref_counts[block] += 1

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks nobody references return to the free list."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks.append(block)
        seq.block_table = []

    def blocks_to_append(self, seq: Sequence) -> int:
        """New blocks (0 or 1) that writing ``seq``'s last token (position ``num_tokens - 1``) needs."""
        index = (len(seq.token_ids) - 1) // self.block_size
        if index == len(seq.block_table):
            return 1
        return int(self.ref_counts[seq.block_table[index]] > 1)

    def prepare_append(self, seq: Sequence) -> tuple[int, int] | None:
        """Make the block of ``seq``'s last position exist and be private.

        Returns ``(source, destination)`` when a shared block was copied on write (the
        caller copies the KV data), else None. Call only when ``blocks_to_append`` fit.
        """
        index = (len(seq.token_ids) - 1) // self.block_size
        if index == len(seq.block_table):
            seq.block_table.append(self._take())
            return None
        shared = seq.block_table[index]
        if self.ref_counts[shared] == 1:
            return None
        self.ref_counts[shared] -= 1
        private = self._take()
        seq.block_table[index] = private
        return shared, private
