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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # matrix-unit dots need at least 16 rows / columns
MAX_TILE_TOKENS = 128  # tokens per tile, at most
TILE_ELEMENTS = 8192  # tokens x head dims of one tile: a tile this large runs 8 warps (else 4)


@triton.jit
def _paged_decode_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, scale,
    stride_q_seq, stride_q_head,
    stride_k_block, stride_k_head, stride_k_row,
    stride_v_block, stride_v_head, stride_v_row,
    stride_o_seq, stride_o_head, stride_table,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_valid = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    qd_mask = (offs_g < GROUP)[:, None] & d_valid[None, :]
    q = tl.load(q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=qd_mask, other=0.0).to(tl.float32)  # (G, D)
    context_len = tl.load(lens_ptr + seq)
    table = tables_ptr + seq * stride_table
    k_head = k_ptr + kv_head * stride_k_head
    v_head = v_ptr + kv_head * stride_v_head
    running_max = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    for start in range(0, context_len, BLOCK_N):
        tokens = start + offs_n
        valid = tokens < context_len  # (N,)
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
    out = acc / running_sum[:, None]
    tl.store(out_ptr + seq * stride_o_seq + heads[:, None] * stride_o_head + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=qd_mask)


def _check_inputs(query, k_cache, v_cache, block_tables, context_lens) -> None:
    if query.dim() != 3:
        raise ValueError(f"query must be (num_seqs, num_heads, head_dim), got shape {tuple(query.shape)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 4 or cache.shape[-1] != query.shape[-1] or cache.stride(-1) != 1:
            raise ValueError(f"{name} must be (num_blocks, num_kv_heads, block_size, head_dim) with a "
                             f"contiguous last dim matching query, got shape {tuple(cache.shape)}")
        if cache.dtype != query.dtype or cache.device != query.device:
            raise ValueError(f"{name} must have query's dtype and device, got {cache.dtype} on {cache.device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
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
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Paged decode attention (module docstring): query (B, H, D) -> (B, H, D) in query's dtype.

    ``k_cache, v_cache`` (num_blocks, Hkv, block_size, D); ``block_tables`` (B, max_blocks);
    ``context_lens`` (B,) in [1, max_blocks * block_size] (range checked on CPU only, to keep
    CUDA launches sync-free and graph-capturable).
    """
    _check_inputs(query, k_cache, v_cache, block_tables, context_lens)
    query = query.contiguous() if query.stride(-1) != 1 else query
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    block_d = max(MIN_DOT, triton.next_power_of_2(head_dim))
    block_n = max(MIN_DOT, min(MAX_TILE_TOKENS, TILE_ELEMENTS // block_d))  # whatever the cache block size
    out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    _paged_decode_fwd_kernel[(num_seqs, num_kv_heads)](
        query, k_cache, v_cache, out, block_tables, context_lens, float(scale),
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=max(MIN_DOT, triton.next_power_of_2(group)), BLOCK_D=block_d,
        BLOCK_N=block_n, PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=8 if block_n * block_d >= TILE_ELEMENTS else 4,
    )
    return out
