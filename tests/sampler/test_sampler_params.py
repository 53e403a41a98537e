"""SamplingParams validation and the block manager / scheduler bookkeeping."""

from __future__ import annotations

import time

import pytest

from effreason.sampler import SamplingParams
from effreason.sampler.block_manager import BlockManager
from effreason.sampler.scheduler import Scheduler
from effreason.sampler.sequence import Sequence, Status


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("n", 1.5), ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0),
    ("top_p", 1.5), ("top_k", -1), ("max_tokens", 0), ("stop_token_ids", (1, -2)), ("stop_token_ids", 5),
    ("seed", -1), ("n", True),
])
def test_invalid_params_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_params_defaults_and_greedy():
    params = SamplingParams(temperature=0, stop_token_ids=[3, 4])
    assert params.greedy and params.stop_token_ids == (3, 4)
    assert not SamplingParams().greedy


def test_params_truncated_by_top_k_or_top_p():
    assert not SamplingParams().truncated
    assert SamplingParams(top_k=5).truncated and SamplingParams(top_p=0.9).truncated


def test_fork_shares_blocks_and_copy_on_write_privatises_the_partial_block():
    manager = BlockManager(num_blocks=8, block_size=4)
    parent = Sequence(0, 0, list(range(6)), [0, 1])  # 6 tokens: one full block, one partial
    manager.allocate(parent)
    children = [parent.fork(1 + j, j) for j in range(2)]
    for child in children:
        manager.share(child)
        child.token_ids.append(99)  # the token sampled from the prefill, at position 6
    manager.free(parent)
    full, partial = children[0].block_table
    assert manager.ref_counts[full] == 2 and manager.ref_counts[partial] == 2
    assert manager.blocks_to_append(children[0]) == 1
    assert manager.prepare_append(children[0]) == (partial, children[0].block_table[1])
    assert manager.ref_counts[partial] == 1 and manager.prepare_append(children[1]) is None
    for child in children:
        manager.free(child)
    assert manager.num_free == 8


def test_blocks_for_several_positions_copy_the_shared_block_and_append_the_rest():
    manager = BlockManager(num_blocks=8, block_size=4)
    parent = Sequence(0, 0, list(range(6)), [0, 1])  # blocks [0..3] [4 5 _ _]
    manager.allocate(parent)
    child = parent.fork(1, 0)
    manager.share(child)
    child.token_ids.append(99)  # next positions to write: 6, 7, 8, ..., 6 + n - 1
    partial = child.block_table[1]
    assert [manager.blocks_to_append(child, n) for n in (1, 2, 3, 6, 7)] == [1, 1, 2, 2, 3]
    assert manager.prepare_append(child, 6) == (partial, child.block_table[1])  # positions 6..11
    assert len(child.block_table) == 3 and manager.ref_counts[partial] == 1
    assert manager.blocks_to_append(child, 2) == 0 and manager.prepare_append(child, 2) is None
    child.token_ids.extend([7] * 5)  # 12 tokens: positions 11.. next
    assert manager.blocks_to_append(child, 1) == 0 and manager.blocks_to_append(child, 2) == 1


def test_scheduler_decodes_one_step_when_blocks_for_more_are_short():
    manager = BlockManager(num_blocks=6, block_size=2)
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=64)
    seqs = [Sequence(i, i, [1 + i, 2, 3], [0]) for i in range(2)]  # two blocks each, none shared
    for seq in seqs:
        scheduler.add(seq)
    scheduler.start_running(scheduler.schedule().seqs)
    for seq in seqs:
        seq.token_ids.append(4)  # next position 3: in the second block
    assert manager.num_free == 2
    batch = scheduler.schedule(decode_steps=4)  # positions 3..6: two more blocks each, two are free
    assert not batch.is_prefill and batch.num_steps == 1 and batch.seqs == seqs and manager.num_free == 2
    batch = scheduler.schedule(decode_steps=2)  # positions 3, 4: one more block each
    assert batch.num_steps == 2 and manager.num_free == 0 and all(len(seq.block_table) == 3 for seq in seqs)


def test_scheduler_keeps_spare_blocks_and_preempts_the_newest_sequence():
    manager = BlockManager(num_blocks=6, block_size=2)
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=64)
    seqs = [Sequence(i, i, [1, 2, 3], [0]) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    batch = scheduler.schedule()
    assert batch.is_prefill and batch.seqs == seqs[:2]  # a third would leave fewer spare blocks than sequences
    scheduler.start_running(batch.seqs)
    scheduler.waiting.clear()
    manager.allocate(Sequence(9, 9, [0] * 4, [0]))  # someone else takes the last free blocks
    for seq in seqs:
        seq.token_ids.extend([4, 5])  # position 4: both need a third block, none is free
    batch = scheduler.schedule()
    assert not batch.is_prefill and batch.seqs == seqs[:1] and len(seqs[0].block_table) == 3
    assert seqs[1].status is Status.WAITING and scheduler.num_preemptions == 1 and not seqs[1].block_table


def test_prefix_cache_reuses_full_blocks_until_they_are_handed_out_again():
    manager = BlockManager(num_blocks=4, block_size=2)
    first = Sequence(0, 0, [1, 2, 3, 4, 5], [0])  # blocks [1 2] [3 4] [5]
    manager.allocate(first)
    assert first.num_cached_tokens == 0
    second = Sequence(1, 1, [1, 2, 3, 9], [0])  # shares [1 2]; [3 9] differs
    manager.allocate(second)
    assert second.num_cached_tokens == 2 and second.block_table[0] == first.block_table[0]
    assert manager.ref_counts[first.block_table[0]] == 2
    manager.free(first)
    manager.free(second)
    assert manager.num_free == 4
    again = Sequence(2, 2, [1, 2, 3, 4, 7], [0])  # both full blocks still cached while free
    manager.allocate(again)
    assert again.num_cached_tokens == 4
    manager.free(again)
    for _ in range(4):  # handing every block out again forgets their digests
        manager.allocate(Sequence(3, 3, [8], [0]))
    assert not manager.cached_blocks
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.allocate(Sequence(0, 0, [1, 2, 3], [0]))
    manager.clear_prefix_cache()
    late = Sequence(1, 1, [1, 2, 3], [0])
    manager.allocate(late)
    assert late.num_cached_tokens == 0


def test_taking_blocks_stays_cheap_after_many_frees():
    """Regression: the free list was a dict whose first key, after many deletions, is found by scanning the
    deleted slots, so each take cost O(blocks taken so far): over a second here, 0.1 s now."""
    manager = BlockManager(num_blocks=80_000, block_size=1, prefix_caching=False)
    seqs = [Sequence(i, 0, [0], [0]) for i in range(40_000)]
    start = time.perf_counter()
    for seq in seqs:
        manager.allocate(seq)
    for seq in seqs[::2]:
        manager.free(seq)
    taken = Sequence(-1, 0, [0] * 50_000, [0])
    manager.allocate(taken)
    assert time.perf_counter() - start < 0.5
    # least recently freed first: the never-used blocks, then the freed ones in the order they were freed
    assert taken.block_table[:2].tolist() == [40_000, 40_001] and taken.block_table[40_000:40_002].tolist() == [0, 2]
