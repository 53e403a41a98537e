"""Paged decode attention: torch reference vs a dense float64 oracle, the native CPU op and Triton (one pass
or split-K); the CUDA prefill's single padded attention call vs a float64 oracle per sequence.

The Triton cases run on a GPU, or on the CPU under TRITON_INTERPRET=1: without a GPU, a test re-runs
them in a subprocess with that variable set (it must be set before anything imports Triton).
"""

from __future__ import annotations

import functools

import pytest
import torch

from effreason import _backends
from effreason.sampler.attention import (padded_causal_attention, padded_layout, padding_pays,
                                         paged_decode_attention_reference)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}

# (num_seqs, num_heads, num_kv_heads, head_dim, block_size, context_lens)
SHAPES = [
    (1, 1, 1, 8, 4, [1]),
    (3, 6, 2, 24, 4, [4, 5, 13]),
    (4, 7, 7, 16, 8, [8, 1, 17, 24]),
    (5, 8, 2, 32, 16, [1, 16, 17, 31, 40]),
    (2, 10, 2, 64, 8, [3, 19]),  # compiled-in head dims of the CPU op, group 5 = 4 + 1
    (1, 2, 1, 128, 16, [33]),
    (2, 8, 2, 16, 32, [5, 40]),  # head dim 16 (not compiled in), blocks of 32 rows
    (3, 14, 2, 64, 16, [1, 129, 300]),  # Qwen2.5-0.5B heads: several 128-token tiles, a partial one
    (2, 4, 1, 32, 256, [200, 300]),  # flash-attn's block size: Triton tiles smaller than a cache block
    (3, 6, 2, 128, 8, [1, 6, 23]),  # group 3: fewer heads than one four-head pass
    (2, 8, 1, 32, 2, [4, 11]),  # blocks of 2 rows; group 8: two four-head passes
]


def _inputs(shape, dtype, seed=0, device=DEVICE):
    num_seqs, num_heads, num_kv_heads, head_dim, block_size, lens = shape
    generator = torch.Generator().manual_seed(seed)
    max_blocks = -(-max(lens) // block_size) + 1  # one spare column of padding entries
    num_blocks = num_seqs * max_blocks + 3
    tables = torch.randperm(num_blocks, generator=generator)[: num_seqs * max_blocks].view(num_seqs, max_blocks)
    make = lambda *size: torch.randn(*size, generator=generator).to(device, dtype)
    query = make(num_seqs, num_heads, head_dim)
    k_cache = make(num_blocks, num_kv_heads, block_size, head_dim)
    v_cache = make(num_blocks, num_kv_heads, block_size, head_dim)
    return query, k_cache, v_cache, tables.to(device, torch.int32), torch.tensor(lens, dtype=torch.int32, device=device)


def _dense_oracle(query, k_cache, v_cache, tables, lens, scale):
    """Per-sequence dense attention in float64 from the definition."""
    out = torch.empty(query.shape, dtype=torch.float64)
    group = query.shape[1] // k_cache.shape[1]
    for seq in range(query.shape[0]):
        length = int(lens[seq])
        positions = torch.arange(length)
        blocks = tables[seq].long().cpu()[positions // k_cache.shape[2]]
        keys = k_cache.cpu().double()[blocks, :, positions % k_cache.shape[2]]  # (L, Hkv, D)
        values = v_cache.cpu().double()[blocks, :, positions % k_cache.shape[2]]
        for head in range(query.shape[1]):
            scores = keys[:, head // group] @ query[seq, head].cpu().double() * scale
            out[seq, head] = torch.softmax(scores, 0) @ values[:, head // group]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_dense_oracle(shape):
    inputs = _inputs(shape, torch.float32)
    out = paged_decode_attention_reference(*inputs, 0.37)
    torch.testing.assert_close(out.cpu().double(), _dense_oracle(*inputs, 0.37), atol=1e-5, rtol=0)


def _check_against_reference(kernel, shape, dtype, device=DEVICE):
    inputs = _inputs(shape, dtype, device=device)
    oracle = _dense_oracle(*inputs, 0.37)
    out = kernel(*inputs, 0.37)
    assert out.dtype == dtype and out.shape == inputs[0].shape
    reference_error = (paged_decode_attention_reference(*inputs, 0.37).cpu().double() - oracle).abs().max()
    kernel_error = (out.cpu().double() - oracle).abs().max()
    assert kernel_error <= max(2 * reference_error, TOLERANCE[dtype]), (kernel_error, reference_error)


native_available = _backends.has_native() and hasattr(torch.ops.effreason, "paged_attention_decode")
CPU = torch.device("cpu")  # the native op is the CPU's (on CUDA: Triton)


@pytest.mark.skipif(not native_available, reason="effreason._C without paged_attention_decode")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_op_matches_reference(shape, dtype):
    _check_against_reference(torch.ops.effreason.paged_attention_decode, shape, dtype, device=CPU)


@pytest.mark.skipif(not native_available, reason="effreason._C without paged_attention_decode")
def test_native_op_registration_and_value_errors():
    inputs = _inputs(SHAPES[1], torch.float32, device=CPU)
    torch.library.opcheck(torch.ops.effreason.paged_attention_decode.default, (*inputs, 0.5),
                          test_utils=("test_schema", "test_faketensor"))
    query, k_cache, v_cache, tables, lens = inputs
    with pytest.raises(ValueError, match="heads"):
        torch.ops.effreason.paged_attention_decode(query[:, :5], k_cache, v_cache, tables, lens, 0.5)
    with pytest.raises(ValueError, match="context_lens"):
        torch.ops.effreason.paged_attention_decode(query, k_cache, v_cache, tables, lens * 100, 0.5)


@pytest.mark.skipif(not native_available, reason="effreason._C without paged_attention_decode")
def test_native_op_reads_strided_query_heads():
    """Query heads further apart than head_dim (a view of a wider tensor) give the contiguous result."""
    query, k_cache, v_cache, tables, lens = _inputs(SHAPES[3], torch.float32, device=CPU)
    wide = torch.zeros(query.shape[0], query.shape[1], 2 * query.shape[2])
    wide[..., :query.shape[2]] = query
    strided = wide[..., :query.shape[2]]
    assert strided.stride(1) == 2 * query.shape[2]
    expected = torch.ops.effreason.paged_attention_decode(query, k_cache, v_cache, tables, lens, 0.37)
    torch.testing.assert_close(torch.ops.effreason.paged_attention_decode(strided, k_cache, v_cache, tables, lens, 0.37),
                               expected, atol=0, rtol=0)


triton_usable = _backends.triton_usable_on(DEVICE)


@pytest.mark.skipif(triton_usable or not _backends.has_triton(), reason="the triton cases run directly")
def test_triton_cases_under_the_interpreter(run_triton_cases_interpreted):
    run_triton_cases_interpreted(__file__)


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("num_splits", [1, 5], ids=lambda splits: f"splits{splits}")
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_kernel_matches_reference(shape, num_splits):
    """One program per (sequence, KV head), or split-K: 5 splits, more than most contexts here have tiles (empty splits)."""
    from effreason.kernels.paged_attention import paged_attention_decode
    dtypes = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32]
    for dtype in dtypes:
        _check_against_reference(functools.partial(paged_attention_decode, num_splits=num_splits), shape, dtype)


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_split_k_only_for_few_sequences_with_long_contexts():
    from effreason.kernels.paged_attention import MAX_SPLITS, MIN_SPLIT_TOKENS, choose_num_splits
    assert choose_num_splits(512, 2, 32768, num_sms=132) == 1  # the (sequence, head) programs fill the GPU
    assert choose_num_splits(132, 2, 32768, num_sms=132) == 1
    assert choose_num_splits(64, 2, 32768, num_sms=132) == 3
    assert choose_num_splits(4, 2, 16384, num_sms=132) == 33  # two programs per multiprocessor
    assert choose_num_splits(1, 1, 1 << 20, num_sms=132) == MAX_SPLITS
    assert choose_num_splits(4, 2, 3 * MIN_SPLIT_TOKENS, num_sms=132) == 3  # a short context: few splits
    assert choose_num_splits(4, 2, 100, num_sms=132) == 1
    assert choose_num_splits(3, 2, 16384, num_sms=1) == 1  # the interpreter's "device"


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_launcher_rejects_bad_inputs():
    from effreason.kernels.paged_attention import paged_attention_decode
    query, k_cache, v_cache, tables, lens = _inputs(SHAPES[1], torch.float32)
    with pytest.raises(ValueError, match="heads"):
        paged_attention_decode(query[:, :5], k_cache, v_cache, tables, lens, 0.5)
    with pytest.raises(ValueError, match="block_tables"):
        paged_attention_decode(query, k_cache, v_cache, tables.float(), lens, 0.5)
    with pytest.raises(ValueError, match="v_cache"):
        paged_attention_decode(query, k_cache, v_cache.double(), tables, lens, 0.5)
    for bad_splits in (0, 65, 2.0, True):
        with pytest.raises(ValueError, match="num_splits"):
            paged_attention_decode(query, k_cache, v_cache, tables, lens, 0.5, num_splits=bad_splits)
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="context_lens"):
            paged_attention_decode(query, k_cache, v_cache, tables, lens * 0, 0.5)


# ------------------------------------------------------------------ prefill in one padded call
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths, num_heads, num_kv_heads", [([1, 7, 3, 12, 5], 6, 2), ([9], 4, 4), ([2, 2], 3, 1)])
def test_padded_causal_attention_matches_one_call_per_sequence(lengths, num_heads, num_kv_heads, dtype):
    """The CUDA prefill's single padded SDPA call vs causal attention of each sequence alone (float64)."""
    generator = torch.Generator().manual_seed(0)
    bounds = [(sum(lengths[:s]), sum(lengths[:s + 1])) for s in range(len(lengths))]
    total, dim = sum(lengths), 8
    query, key, value = (torch.randn(total, heads, dim, generator=generator).to(DEVICE, dtype)
                         for heads in (num_heads, num_kv_heads, num_kv_heads))
    out = padded_causal_attention(query, key, value, *padded_layout(bounds, DEVICE), scale=0.3)
    group = num_heads // num_kv_heads
    for start, end in bounds:
        q, k, v = (x[start:end].double().transpose(0, 1) for x in (query, key, value))
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = (q @ k.transpose(1, 2) * 0.3).masked_fill(torch.ones(end - start, end - start, dtype=torch.bool,
                                                                     device=DEVICE).triu(1), float("-inf"))
        expected = (scores.softmax(-1) @ v).transpose(0, 1)
        torch.testing.assert_close(out[start:end].double(), expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_padding_pays_only_for_small_masks_and_little_padding():
    assert padding_pays([(0, 100), (100, 180)])
    assert not padding_pays([(0, 1), (1, 2), (2, 100)])  # 3 x 100 padded rows for 100 tokens
    assert not padding_pays([(s * 4096, (s + 1) * 4096) for s in range(64)])  # a 1 GiB mask


# ------------------------------------------------------------------ prefill over the paged cache in one launch
# (cached, new) tokens per sequence, heads, kv heads, head dim, block size: no prefix; prefixes of whole and
# partial blocks; one new token; more new tokens than a query tile (32); GQA groups of 1, 3 and 4
PREFILL_CASES = [
    ([(0, 1), (0, 7), (0, 12)], 6, 2, 24, 4),
    ([(8, 3), (0, 33), (5, 1), (13, 40)], 4, 1, 16, 8),
    ([(30, 70)], 3, 3, 64, 16),
    ([(2, 2), (17, 9)], 8, 2, 128, 2),
]


def _prefill_inputs(case, dtype, device=DEVICE):
    """Packed new-token queries and keys/values, caches holding every sequence's whole context (new tokens
    included), tables, and the metadata of the torch path (``prefill_attention``)."""
    from effreason.sampler.attention import AttentionMetadata, cached_context
    seqs, num_heads, num_kv_heads, head_dim, block_size = case
    generator = torch.Generator().manual_seed(len(seqs) + head_dim)
    widths = [-(-(cached + new) // block_size) for cached, new in seqs]
    num_blocks = sum(widths) + 2
    order = torch.randperm(num_blocks, generator=generator)
    tables = torch.zeros(len(seqs), max(widths) + 1, dtype=torch.int32)
    for index, width in enumerate(widths):
        tables[index, :width] = order[sum(widths[:index]):sum(widths[:index + 1])]
    make = lambda *size: torch.randn(*size, generator=generator).to(device, dtype)  # noqa: E731
    k_cache, v_cache = (make(num_blocks, num_kv_heads, block_size, head_dim) for _ in range(2))
    tables = tables.to(device)
    news = [new for _, new in seqs]
    query = make(sum(news), num_heads, head_dim)
    key = torch.cat([cached_context(k_cache, tables[s], c + n)[:, c:].transpose(0, 1) for s, (c, n) in enumerate(seqs)])
    value = torch.cat([cached_context(v_cache, tables[s], c + n)[:, c:].transpose(0, 1) for s, (c, n) in enumerate(seqs)])
    ends = torch.tensor(news).cumsum(0)
    cu_seqlens = torch.cat([ends.new_zeros(1), ends]).to(device, torch.int32)
    cached = [c for c, _ in seqs]
    meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.zeros(0, dtype=torch.int64),
                             seq_bounds=list(zip((ends - torch.tensor(news)).tolist(), ends.tolist())),
                             cu_seqlens=cu_seqlens, max_seqlen=max(news), prefix_lens=cached,
                             prefix_tables=list(tables) if any(cached) else None)
    context_lens = torch.tensor([c + n for c, n in seqs], dtype=torch.int32, device=device)
    return (query, key, value, k_cache, v_cache, meta), (tables, cu_seqlens, context_lens, max(news))


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("case", PREFILL_CASES, ids=str)
def test_triton_paged_prefill_matches_reference(case):
    """One launch for all sequences vs ``prefill_attention``'s torch path; both against its float64 run."""
    from effreason.kernels.paged_prefill import paged_prefill_attention
    from effreason.sampler.attention import prefill_attention
    scale = case[3] ** -0.5
    oracle_inputs, _ = _prefill_inputs(case, torch.float64, device=CPU)
    oracle = prefill_attention(*oracle_inputs, scale)
    dtypes = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32]
    for dtype in dtypes:
        (query, key, value, k_cache, v_cache, meta), (tables, cu_seqlens, lens, longest) = _prefill_inputs(case, dtype)
        out = paged_prefill_attention(query, k_cache, v_cache, tables, cu_seqlens, lens, longest, scale)
        assert out.dtype == dtype and out.shape == query.shape
        reference_error = (prefill_attention(query, key, value, k_cache, v_cache, meta, scale).cpu().double()
                           - oracle).abs().max()
        kernel_error = (out.cpu().double() - oracle).abs().max()
        assert kernel_error <= max(2 * reference_error, TOLERANCE[dtype]), (kernel_error, reference_error)


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_paged_prefill_rejects_bad_inputs():
    from effreason.kernels.paged_prefill import paged_prefill_attention
    (query, _, _, k_cache, v_cache, _), (tables, cu_seqlens, lens, longest) = _prefill_inputs(PREFILL_CASES[1],
                                                                                              torch.float32, CPU)
    good = (query, k_cache, v_cache, tables, cu_seqlens, lens, longest, 0.25)
    bad = {"query": (query[..., :-1],), "v_cache": (query, k_cache, v_cache.double()),
           "block_tables": (query, k_cache, v_cache, tables.long()),
           "cu_seqlens": (query, k_cache, v_cache, tables, cu_seqlens[:-1]),
           "context_lens": (query, k_cache, v_cache, tables, cu_seqlens, lens.long()),
           "max_new_tokens": (query, k_cache, v_cache, tables, cu_seqlens, lens, -1)}
    bad["cu_seqlens must rise"] = (query, k_cache, v_cache, tables, cu_seqlens, lens, longest - 1)
    bad["context_lens must be in"] = (query, k_cache, v_cache, tables, cu_seqlens, lens * 0)
    for name, prefix in bad.items():
        with pytest.raises(ValueError, match=name):
            paged_prefill_attention(*prefix, *good[len(prefix):])
