"""Causal prefill attention of packed sequences over the paged KV cache in Triton: one launch for all of them.

Sequence ``s`` has ``n_s`` new tokens (rows ``cu_seqlens[s] ..`` of the packed query) after ``c_s`` tokens
already cached; its context ``L_s = c_s + n_s`` is all in the cache, new tokens included (the RoPE kernel
writes them first). New token ``i`` sits at position ``c_s + i`` and sees keys ``t <= c_s + i``:

    out[cu_s + i, h] = sum_{t <= c_s + i} softmax_t(scale * q[cu_s + i, h] . K[T_s[t // bs], g, t % bs]) V[...]

with ``g = h // group`` (grouped-query attention) and ``T_s`` the sequence's block table. One program per
(sequence, query head, tile of ``BLOCK_M`` new tokens) walks the keys in tiles of ``BLOCK_N`` up to its last
row's position, with an online softmax (as in FlashAttention, Dao et al. 2022); both products are
matrix-unit dots in the cache's dtype with float32 accumulation (full float32 for float32 caches), the
probabilities rounded to it for the second, as flash-attn does. Replaces one attention call per sequence
and layer, and reads cached prefixes in place. The oracle is the torch path of
``effreason.sampler.attention.prefill_attention``. Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from effreason.kernels.paged_attention import MIN_DOT, check_paged_cache

BLOCK_M = 32  # new tokens (query rows) per program
BLOCK_N = 32  # keys per loop iteration


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, cu_seqlens_ptr, context_lens_ptr, scale,
    stride_q_token, stride_q_head, stride_k_block, stride_k_head, stride_k_row,
    stride_v_block, stride_v_head, stride_v_row, stride_o_token, stride_o_head, stride_table,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    first_row = tl.load(cu_seqlens_ptr + seq)
    num_new = tl.load(cu_seqlens_ptr + seq + 1) - first_row
    context_len = tl.load(context_lens_ptr + seq)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # new-token index within the sequence
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    rows_valid = offs_m < num_new
    d_valid = offs_d < HEAD_DIM
    qd_mask = rows_valid[:, None] & d_valid[None, :]
    rows = (first_row + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_q_token + head * stride_q_head + offs_d[None, :],
                mask=qd_mask, other=0.0)  # (M, D)
    query_positions = context_len - num_new + offs_m  # (M,)
    keys_end = tl.minimum(context_len, context_len - num_new + (tile + 1) * BLOCK_M)  # past the tile's last row
    keys_end = tl.where(tile * BLOCK_M < num_new, keys_end, 0)  # a tile past the sequence's rows: no work
    table = tables_ptr + seq * stride_table
    k_head = k_ptr + (head // GROUP) * stride_k_head
    v_head = v_ptr + (head // GROUP) * stride_v_head
    running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, keys_end, BLOCK_N):
        keys = start + offs_n
        keys_valid = keys < keys_end  # (N,)
        blocks = tl.load(table + keys // BLOCK_SIZE, mask=keys_valid, other=0).to(tl.int64)
        key_rows = keys % BLOCK_SIZE
        kd_mask = keys_valid[:, None] & d_valid[None, :]
        k = tl.load(k_head + blocks[:, None] * stride_k_block + key_rows[:, None] * stride_k_row + offs_d[None, :],
                    mask=kd_mask, other=0.0)  # (N, D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (M, N) float32
        visible = keys_valid[None, :] & (keys[None, :] <= query_positions[:, None])  # key 0 for every row
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max[:, None])  # (M, N)
        v = tl.load(v_head + blocks[:, None] * stride_v_block + key_rows[:, None] * stride_v_row + offs_d[None, :],
                    mask=kd_mask, other=0.0)  # (N, D)
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        running_max = new_max
    out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_o_token + head * stride_o_head + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=qd_mask)


def _check_inputs(query, k_cache, v_cache, block_tables, cu_seqlens, context_lens, max_new_tokens) -> None:
    if query.dim() != 3 or query.dtype not in (torch.float32, torch.bfloat16, torch.float16) or query.stride(-1) != 1:
        raise ValueError(f"query must be float32/bf16/fp16 (N, H, D) with a contiguous last dim, got {query.dtype} "
                         f"{tuple(query.shape)}")
    check_paged_cache(query, k_cache, v_cache)
    num_blocks, num_kv_heads, block_size = k_cache.shape[:3]
    if query.shape[1] % num_kv_heads:
        raise ValueError(f"query's {query.shape[1]} heads must be a multiple of the cache's {num_kv_heads} KV heads")
    if block_size & (block_size - 1):
        raise ValueError(f"k_cache's block_size must be a power of two, got {block_size}")
    num_seqs = context_lens.shape[0] if context_lens.dim() == 1 else -1
    if context_lens.dim() != 1 or context_lens.dtype != torch.int32 or context_lens.device != query.device:
        raise ValueError(f"context_lens must be int32 (S,) on {query.device}, got {context_lens.dtype} "
                         f"{tuple(context_lens.shape)}")
    if cu_seqlens.shape != (num_seqs + 1,) or cu_seqlens.dtype != torch.int32 or cu_seqlens.device != query.device:
        raise ValueError(f"cu_seqlens must be int32 ({num_seqs + 1},) on {query.device}, got {cu_seqlens.dtype} "
                         f"{tuple(cu_seqlens.shape)}")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or block_tables.dtype != torch.int32 \
            or block_tables.stride(-1) != 1:
        raise ValueError(f"block_tables must be int32 ({num_seqs}, max_blocks) with contiguous rows, got "
                         f"{block_tables.dtype} {tuple(block_tables.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if query.device.type == "cpu" and num_seqs:  # range checks cost a device sync: CPU (interpreter) only
        new_tokens = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != query.shape[0] or int(new_tokens.min()) < 0 \
                or int(new_tokens.max()) > max_new_tokens:
            raise ValueError(f"cu_seqlens must rise from 0 to {query.shape[0]} in steps of at most "
                             f"max_new_tokens={max_new_tokens}")
        if bool((context_lens < new_tokens).any()) or int(context_lens.max()) > block_tables.shape[1] * block_size:
            raise ValueError(f"context_lens must be in [new tokens, {block_tables.shape[1] * block_size}]")
        if block_tables.numel() and (int(block_tables.min()) < 0 or int(block_tables.max()) >= num_blocks):
            raise ValueError(f"block_tables entries must be in [0, {num_blocks})")


def paged_prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, cu_seqlens: torch.Tensor, context_lens: torch.Tensor,
                            max_new_tokens: int, scale: float) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached context (module docstring):
    query (N, H, D) packed -> (N, H, D) in query's dtype.

    ``k_cache, v_cache`` (num_blocks, Hkv, block_size, D) already hold every context token; ``block_tables``
    (S, max_blocks) int32; ``cu_seqlens`` (S + 1,) int32, the new tokens' row offsets; ``context_lens`` (S,)
    int32, cached plus new tokens; ``max_new_tokens`` the most new tokens of one sequence (a host int: it
    sizes the grid). Ranges are checked on the CPU only, to keep CUDA launches sync-free.
    """
    _check_inputs(query, k_cache, v_cache, block_tables, cu_seqlens, context_lens, max_new_tokens)
    num_tokens, num_heads, head_dim = query.shape
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    num_seqs = context_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0 or max_new_tokens == 0:
        return out
    _paged_prefill_kernel[(num_seqs, num_heads, triton.cdiv(max_new_tokens, BLOCK_M))](
        query, k_cache, v_cache, out, block_tables, cu_seqlens, context_lens, float(scale),
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=num_heads // k_cache.shape[1], HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[2],
        BLOCK_D=max(MIN_DOT, triton.next_power_of_2(head_dim)), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32")
    return out
