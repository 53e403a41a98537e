"""Fixed-size KV-cache blocks: a free list, reference counts (blocks are shared after a fork) and a
prefix cache of full blocks addressed by their content."""

from __future__ import annotations

import array
import collections
import hashlib

from effreason.sampler.sequence import Sequence

DIGEST_BYTES = 16  # a prefix block's digest: 128 bits


class BlockManager:
    """Hands out KV blocks of ``block_size`` token slots each.

    A sequence's ``block_table[i]`` holds its tokens ``i*block_size .. (i+1)*block_size - 1``.
    Forked children share their parent's blocks (reference count > 1); before a child writes
    into a shared block it gets a private copy (copy on write, ``prepare_append``).

    Prefix cache (``prefix_caching=True``): full block ``i`` of a token sequence is addressed by
    ``d_i = blake2b(d_{i-1} || tokens of block i)`` (128 bits), which names the whole prefix up to the
    block's end. ``allocate`` reuses the blocks of a sequence's leading digests that are cached, so
    their K/V are not recomputed, and records the digests of the full blocks it hands out. A block
    whose last reference goes keeps its digest on the free list and is reused until the free list
    hands it out again, least recently freed first. The cached K/V depend on the weights:
    ``clear_prefix_cache`` forgets every digest.
    """

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.ref_counts = [0] * num_blocks
        # least recently freed first; an OrderedDict pops its first key in O(1), where a dict's first key
        # after many deletions is found by scanning the deleted slots (the cost grows with the blocks taken)
        self.free_blocks: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self.block_digest: list[bytes | None] = [None] * num_blocks
        self.cached_blocks: dict[bytes, int] = {}  # digest -> block holding that prefix's K/V

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def in_use(self) -> bool:
        """True while some block is referenced (a sequence holds it)."""
        return len(self.free_blocks) < self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens: ``ceil(num_tokens / block_size)``."""
        return -(-num_tokens // self.block_size)

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (their K/V were computed with other weights)."""
        self.cached_blocks.clear()
        self.block_digest = [None] * self.num_blocks

    def _take(self) -> int:
        """A free block (the least recently freed), no longer cached under its old digest."""
        block, _ = self.free_blocks.popitem(last=False)
        digest = self.block_digest[block]
        if digest is not None:
            del self.cached_blocks[digest]
            self.block_digest[block] = None
        self.ref_counts[block] = 1
        return block

    def _digests(self, token_ids: list[int], num_blocks: int) -> list[bytes]:
        """Digests ``d_0 .. d_{num_blocks-1}`` of the first full blocks of ``token_ids``."""
        digests, digest, size = [], b"", self.block_size
        for index in range(num_blocks):
            tokens = array.array("q", token_ids[index * size:(index + 1) * size]).tobytes()
            digest = hashlib.blake2b(digest + tokens, digest_size=DIGEST_BYTES).digest()
            digests.append(digest)
        return digests

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its tokens (before its prefill), reusing cached prefix blocks.

        Sets ``seq.num_cached_tokens``: the leading tokens whose K/V are already in the cache. The
        last token is never among them (its forward gives the next token's logits).
        """
        digests = self._digests(seq.token_ids, seq.num_tokens // self.block_size) if self.prefix_caching else []
        table = []
        for digest in digests[:(seq.num_tokens - 1) // self.block_size]:
            block = self.cached_blocks.get(digest)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
            table.append(block)
        seq.num_cached_tokens = len(table) * self.block_size
        table += [self._take() for _ in range(self.blocks_for(seq.num_tokens) - len(table))]
        for digest, block in zip(digests, table):  # the new full blocks are filled by this prefill
            if digest not in self.cached_blocks and self.block_digest[block] is None:
                self.cached_blocks[digest] = block
                self.block_digest[block] = digest
        seq.block_table = array.array("i", table)

    def share(self, child: Sequence) -> None:
        """Count ``child`` as one more owner of every block in its (copied) block table."""
        for block in child.block_table:
            self.ref_counts[block] += 1

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks nobody references return to the free list (last block first)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = array.array("i")

    def blocks_to_append(self, seq: Sequence, num_positions: int = 1) -> int:
        """New blocks that writing ``seq``'s next ``num_positions`` positions needs, from its last token's
        (``num_tokens - 1``): blocks past its table, plus a private copy of a shared block it writes into."""
        table, first = seq.block_table, (len(seq.token_ids) - 1) // self.block_size
        beyond = self._table_length(seq, num_positions) - len(table)
        if first == len(table):  # the common case: the positions start a new block
            return beyond
        return max(0, beyond) + int(self.ref_counts[table[first]] > 1)

    def prepare_append(self, seq: Sequence, num_positions: int = 1) -> tuple[int, int] | None:
        """Make the blocks of ``seq``'s next ``num_positions`` positions exist and be private.

        Returns ``(source, destination)`` when a shared block was copied on write (the caller copies
        the KV data), else None. Call only when ``blocks_to_append`` fit.
        """
        table, first = seq.block_table, (len(seq.token_ids) - 1) // self.block_size
        copy = None
        if first < len(table) and self.ref_counts[table[first]] > 1:
            shared = table[first]
            self.ref_counts[shared] -= 1
            table[first] = self._take()
            copy = (shared, table[first])
        for _ in range(self._table_length(seq, num_positions) - len(table)):
            table.append(self._take())
        return copy

    def _table_length(self, seq: Sequence, num_positions: int) -> int:
        """Blocks ``seq``'s table needs to hold its next ``num_positions`` positions, from its last token's on:
        through position ``num_tokens - 2 + num_positions``."""
        return (len(seq.token_ids) - 2 + num_positions) // self.block_size + 1
