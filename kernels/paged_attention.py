"""Paged decode attention in Triton: one program per (sequence, KV head), the group's query heads packed.

    out[s, h] = sum_{t < L_s} softmax_t(scale * q[s, h] . K[T_s[t // bs], g, t % bs]) V[...]

with ``g = h // group`` (grouped-query attention) and ``T_s`` the sequence's block table. The
program walks the context in tiles of ``BLOCK_N`` tokens (each token's cache block looked up in the
table, so a tile spans several blocks or part of one), with an online softmax (Milakov & Gimelshein 2018; as in
FlashAttention / vLLM's paged attention): each K/V tile is read once for all ``group`` query heads,
and both products are matrix-unit dots (``(G, D) x (D, N)`` scores, ``(G, N) x (N, D)`` values, the
group padded to 16 rows) on float32 operands: tf32 for bf16/fp16 caches, whose values tf32 holds
exactly, full float32 ("ieee") for float32 caches. Wide tiles keep many loads in flight, where a
tile per cache block (16 tokens) is latency-bound (bench/RESULTS.md). Cache layout ``(num_blocks, Hkv,
block_size, D)`` (see ``effreason.sampler.attention``, whose ``paged_decode_attention_reference``
is the oracle). Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).

Split-K ("flash-decoding", Dao et al. 2023): with few sequences a grid of (sequence, KV head) programs
leaves most of the GPU idle however long the contexts are, so each sequence's context is cut into
``num_splits`` runs of whole tiles, one program each. A split stores its normalised partial output
``o_i`` and log-sum-exp ``lse_i`` (float32), and a second kernel combines them per (sequence, head):

    out = sum_i exp(lse_i - m) o_i / sum_i exp(lse_i - m),   m = max_i lse_i

Each sequence splits its own length (``ceil(ceil(L / num_splits) / BLOCK_N)`` tiles a split), so a short
context leaves the trailing splits empty (``lse = -inf``, weight 0) and costs them one early exit.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # matrix-unit dots need at least 16 rows / columns
MAX_SPLITS = 64  # context splits per (sequence, KV head), at most
MIN_SPLIT_TOKENS = 256  # a split gets at least this many tokens of the longest context
PROGRAMS_PER_SM = 2  # split-K aims at this many programs per streaming multiprocessor
MAX_TILE_TOKENS = 128  # tokens per tile, at most
TILE_ELEMENTS = 8192  # tokens x head dims of one tile: a tile this large runs 8 warps (else 4)


@triton.jit
def _paged_decode_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, tables_ptr, lens_ptr, scale,
    stride_q_seq, stride_q_head,
    stride_k_block, stride_k_head, stride_k_row,
    stride_v_block, stride_v_head, stride_v_row,
    stride_o_seq, stride_o_head, stride_o_split, stride_lse_seq, stride_lse_head, stride_table,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_valid = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    qd_mask = (offs_g < GROUP)[:, None] & d_valid[None, :]
    q = tl.load(q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=qd_mask, other=0.0).to(tl.float32)  # (G, D)
    context_len = tl.load(lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N  # whole tiles
    begin = split * split_len
    end = tl.minimum(context_len, begin + split_len)
    table = tables_ptr + seq * stride_table
    k_head = k_ptr + kv_head * stride_k_head
    v_head = v_ptr + kv_head * stride_v_head
    running_max = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for start in range(begin, end, BLOCK_N):
        tokens = start + offs_n
        valid = tokens < end  # (N,)
        blocks = tl.load(table + tokens // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = tokens % BLOCK_SIZE
        td_mask = valid[:, None] & d_valid[None, :]
        k = tl.load(k_head + blocks[:, None] * stride_k_block + rows[:, None] * stride_k_row + offs_d[None, :],
                    mask=td_mask, other=0.0).to(tl.float32)  # (N, D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (G, N) float32
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max[:, None])  # (G, N)
        v = tl.load(v_head + blocks[:, None] * stride_v_block + rows[:, None] * stride_v_row + offs_d[None, :],
                    mask=td_mask, other=0.0).to(tl.float32)  # (N, D)
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs, v, input_precision=PRECISION)
        running_max = new_max
    out_rows = out_ptr + seq * stride_o_seq + split * stride_o_split + heads[:, None] * stride_o_head + offs_d[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_rows, (acc / running_sum[:, None]).to(out_ptr.dtype.element_ty), mask=qd_mask)
    else:  # float32 partials; an empty split (begin >= context_len) stores o = 0, lse = -inf
        has_tokens = running_sum > 0
        tl.store(out_rows, acc / tl.where(has_tokens, running_sum, 1.0)[:, None], mask=qd_mask)
        lse = tl.where(has_tokens, running_max + tl.log(tl.where(has_tokens, running_sum, 1.0)), float("-inf"))
        tl.store(lse_ptr + seq * stride_lse_seq + heads * stride_lse_head + split, lse, mask=offs_g < GROUP)


@triton.jit
def _paged_decode_reduce_kernel(
    partial_ptr, lse_ptr, out_ptr,
    stride_p_seq, stride_p_head, stride_p_split, stride_lse_seq, stride_lse_head, stride_o_seq, stride_o_head,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_valid = splits < NUM_SPLITS
    lse = tl.load(lse_ptr + seq * stride_lse_seq + head * stride_lse_head + splits, mask=s_valid,
                  other=float("-inf"))  # (S,); split 0 always holds tokens, so the max is finite
    weights = tl.exp(lse - tl.max(lse, axis=0))  # (S,)
    mask = s_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    partial = tl.load(partial_ptr + seq * stride_p_seq + head * stride_p_head + splits[:, None] * stride_p_split
                      + offs_d[None, :], mask=mask, other=0.0)  # (S, D)
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + seq * stride_o_seq + head * stride_o_head + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, num_sms: int) -> int:
    """Context splits for a decode batch: enough for the programs to reach ``PROGRAMS_PER_SM`` per multiprocessor
    (1 when the (sequence, KV head) programs alone do), at most ``MAX_SPLITS`` and at most one per
    ``MIN_SPLIT_TOKENS`` tokens of ``max_context`` (the longest context the block tables allow)."""
    wanted = -(-PROGRAMS_PER_SM * num_sms // (num_seqs * num_kv_heads))
    return max(1, min(wanted, MAX_SPLITS, max_context // MIN_SPLIT_TOKENS))


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 on the CPU (the interpreter: nothing to fill)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_paged_cache(query, k_cache, v_cache) -> None:
    """The K and V caches are (num_blocks, num_kv_heads, block_size, head_dim), alike, with query's head
    dim, dtype and device and a contiguous last dim (shared by the decode and prefill launchers)."""
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 4 or cache.shape[-1] != query.shape[-1] or cache.stride(-1) != 1:
            raise ValueError(f"{name} must be (num_blocks, num_kv_heads, block_size, head_dim) with a "
                             f"contiguous last dim matching query, got shape {tuple(cache.shape)}")
        if cache.dtype != query.dtype or cache.device != query.device:
            raise ValueError(f"{name} must have query's dtype and device, got {cache.dtype} on {cache.device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")


def _check_inputs(query, k_cache, v_cache, block_tables, context_lens) -> None:
    if query.dim() != 3:
        raise ValueError(f"query must be (num_seqs, num_heads, head_dim), got shape {tuple(query.shape)}")
    check_paged_cache(query, k_cache, v_cache)
    num_seqs, num_heads = query.shape[0], query.shape[1]
    num_blocks, num_kv_heads, block_size = k_cache.shape[:3]
    if num_heads % num_kv_heads:
        raise ValueError(f"query's {num_heads} heads must be a multiple of the cache's {num_kv_heads} KV heads")
    if block_size & (block_size - 1):
        raise ValueError(f"k_cache's block_size must be a power of two, got {block_size}")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or block_tables.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_tables must be int32/int64 of shape ({num_seqs}, max_blocks), "
                         f"got {block_tables.dtype} {tuple(block_tables.shape)}")
    if context_lens.shape != (num_seqs,) or context_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"context_lens must be int32/int64 of shape ({num_seqs},), got "
                         f"{context_lens.dtype} {tuple(context_lens.shape)}")
    if query.device.type == "cpu" and num_seqs:  # range checks cost a device sync: CPU (interpreter) only
        if int(context_lens.min()) < 1 or int(context_lens.max()) > block_tables.shape[1] * block_size:
            raise ValueError(f"context_lens must be in [1, {block_tables.shape[1] * block_size}]")
        if block_tables.numel() and (int(block_tables.min()) < 0 or int(block_tables.max()) >= num_blocks):
            raise ValueError(f"block_tables entries must be in [0, {num_blocks})")


def paged_attention_decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           num_splits: int | None = None) -> torch.Tensor:
    """Paged decode attention (module docstring): query (B, H, D) -> (B, H, D) in query's dtype.

    ``k_cache, v_cache`` (num_blocks, Hkv, block_size, D); ``block_tables`` (B, max_blocks);
    ``context_lens`` (B,) in [1, max_blocks * block_size] (range checked on CPU only, to keep
    CUDA launches sync-free and graph-capturable). ``num_splits``: context splits per sequence
    (split-K); None chooses them (``choose_num_splits``, from the batch, the table width and the GPU).
    """
    _check_inputs(query, k_cache, v_cache, block_tables, context_lens)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"num_splits must be an int in [1, {MAX_SPLITS}] or None, got {num_splits!r}")
    query = query.contiguous() if query.stride(-1) != 1 else query
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, block_tables.shape[1] * block_size,
                                       _num_sms(query.device))
    group = num_heads // num_kv_heads
    block_d = max(MIN_DOT, triton.next_power_of_2(head_dim))
    block_n = max(MIN_DOT, min(MAX_TILE_TOKENS, TILE_ELEMENTS // block_d))  # whatever the cache block size
    out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    if num_splits == 1:
        partial, lse = out[:, :, None], out  # the kernel writes the output itself; no log-sum-exp
    else:
        partial = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=query.device)
        lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=query.device)
    _paged_decode_fwd_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, partial, lse, block_tables, context_lens, float(scale),
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=max(MIN_DOT, triton.next_power_of_2(group)), BLOCK_D=block_d,
        BLOCK_N=block_n, PRECISION="ieee" if query.dtype == torch.float32 else "tf32", NUM_SPLITS=num_splits,
        num_warps=8 if block_n * block_d >= TILE_ELEMENTS else 4,
    )
    if num_splits > 1:
        _paged_decode_reduce_kernel[(num_seqs, num_heads)](
            partial, lse, out,
            partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d)
    return out
