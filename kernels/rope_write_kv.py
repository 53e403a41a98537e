"""RoPE of query and key with the paged KV-cache write, in Triton: one program per token.

For token n at position p = positions[n] and cache slot s = slot_mapping[n]:

    x = cat(x1, x2) -> cat(x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2)   every query and key head, in place
    k_cache[s // bs, :, s % bs] = rotated key;  v_cache[s // bs, :, s % bs] = value

(half-split RoPE, Su et al. 2021 / HF ``rotate_half``; ``cos, sin = cos_table[p], sin_table[p]``, each
``cat(cos1, cos2)`` of D values). Cache layout ``(num_blocks, Hkv, block_size, D)`` (``effreason.sampler.
attention``). The oracle is the sampler's torch path: ``layers.rotate`` on the gathered table rows, then
``attention.write_kv``. Each half is rounded as there: ``x1 * cos1`` to the input's dtype, then one fused
multiply-add ``- x2 * sin1`` rounded again (torch's ``addcmul_``); the same contract as the native CPU op
``cpu_decode.rope_write_kv``. Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _rotate_in_place(x_ptr, cos1, cos2, sin1, sin2, heads, halves, mask, HALF: tl.constexpr):
    """Rotate the heads at ``x_ptr + heads + halves`` in place; returns the rotated halves (each (H, HALF)
    in the input's dtype)."""
    x1 = tl.load(x_ptr + heads + halves, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + heads + HALF + halves, mask=mask, other=0.0).to(tl.float32)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    first = tl.fma(-x2, sin1, (x1 * cos1).to(dtype).to(tl.float32)).to(dtype)
    second = tl.fma(x1, sin2, (x2 * cos2).to(dtype).to(tl.float32)).to(dtype)
    tl.store(x_ptr + heads + halves, first, mask=mask)
    tl.store(x_ptr + heads + HALF + halves, second, mask=mask)
    return first, second


@triton.jit
def _rope_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, positions_ptr, slots_ptr, k_cache_ptr, v_cache_ptr,
    num_heads, num_kv_heads,
    stride_q_token, stride_q_head, stride_k_token, stride_k_head, stride_v_token, stride_v_head,
    stride_cos, stride_sin,
    stride_kc_block, stride_kc_head, stride_kc_row, stride_vc_block, stride_vc_head, stride_vc_row,
    HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    slot = tl.load(slots_ptr + token)
    block, row = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    halves = tl.arange(0, BLOCK_HALF)
    half_valid = halves < HALF
    cos1 = tl.load(cos_ptr + position * stride_cos + halves, mask=half_valid, other=0.0).to(tl.float32)[None, :]
    cos2 = tl.load(cos_ptr + position * stride_cos + HALF + halves, mask=half_valid, other=0.0).to(tl.float32)[None, :]
    sin1 = tl.load(sin_ptr + position * stride_sin + halves, mask=half_valid, other=0.0).to(tl.float32)[None, :]
    sin2 = tl.load(sin_ptr + position * stride_sin + HALF + halves, mask=half_valid, other=0.0).to(tl.float32)[None, :]
    halves = halves[None, :]

    q_heads = tl.arange(0, BLOCK_H)[:, None]  # (H, 1)
    q_mask = (q_heads < num_heads) & half_valid[None, :]
    q_token = q_ptr + token * stride_q_token
    _rotate_in_place(q_token, cos1, cos2, sin1, sin2, q_heads * stride_q_head, halves, q_mask, HALF)

    kv_heads = tl.arange(0, BLOCK_KV)[:, None]  # (Hkv, 1)
    kv_mask = (kv_heads < num_kv_heads) & half_valid[None, :]
    k_token = k_ptr + token * stride_k_token
    first, second = _rotate_in_place(k_token, cos1, cos2, sin1, sin2, kv_heads * stride_k_head, halves, kv_mask, HALF)
    k_slot = k_cache_ptr + block * stride_kc_block + row * stride_kc_row + kv_heads * stride_kc_head + halves
    tl.store(k_slot, first, mask=kv_mask)
    tl.store(k_slot + HALF, second, mask=kv_mask)

    v_token = v_ptr + token * stride_v_token + kv_heads * stride_v_head + halves
    v_slot = v_cache_ptr + block * stride_vc_block + row * stride_vc_row + kv_heads * stride_vc_head + halves
    tl.store(v_slot, tl.load(v_token, mask=kv_mask), mask=kv_mask)
    tl.store(v_slot + HALF, tl.load(v_token + HALF, mask=kv_mask), mask=kv_mask)


def _check_inputs(query, key, value, cos_table, sin_table, positions, k_cache, v_cache, slot_mapping) -> None:
    if query.dtype not in DTYPES:
        raise ValueError(f"query must be float32, bfloat16 or float16, got {query.dtype}")
    if query.dim() != 3 or query.shape[-1] % 2 or query.stride(-1) != 1:
        raise ValueError(f"query must be (N, H, D) with an even, contiguous last dim, got shape "
                         f"{tuple(query.shape)}, strides {query.stride()}")
    num_tokens, _, head_dim = query.shape
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dim() != 3 or tensor.shape[0] != num_tokens or tensor.shape[2] != head_dim or tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be ({num_tokens}, Hkv, {head_dim}) with a contiguous last dim, got "
                             f"shape {tuple(tensor.shape)}, strides {tensor.stride()}")
    if value.shape != key.shape:
        raise ValueError(f"value must have key's shape {tuple(key.shape)}, got {tuple(value.shape)}")
    for name, table in (("cos_table", cos_table), ("sin_table", sin_table)):
        if table.dim() != 2 or table.shape[1] != head_dim or table.stride(-1) != 1:
            raise ValueError(f"{name} must be (P, {head_dim}) with a contiguous last dim, got {tuple(table.shape)}")
    if sin_table.shape != cos_table.shape:
        raise ValueError(f"sin_table must have cos_table's shape {tuple(cos_table.shape)}, got {tuple(sin_table.shape)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 4 or cache.shape[1] != key.shape[1] or cache.shape[3] != head_dim or cache.stride(-1) != 1:
            raise ValueError(f"{name} must be (num_blocks, {key.shape[1]}, block_size, {head_dim}) with a "
                             f"contiguous last dim, got shape {tuple(cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    for name, tensor in (("key", key), ("value", value), ("cos_table", cos_table), ("sin_table", sin_table),
                         ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.dtype != query.dtype or tensor.device != query.device:
            raise ValueError(f"{name} must have query's dtype {query.dtype} and device {query.device}, got "
                             f"{tensor.dtype} on {tensor.device}")
    for name, index in (("positions", positions), ("slot_mapping", slot_mapping)):
        if index.shape != (num_tokens,) or index.dtype != torch.int64 or index.device != query.device:
            raise ValueError(f"{name} must be int64 ({num_tokens},) on {query.device}, got {index.dtype} "
                             f"{tuple(index.shape)} on {index.device}")
    block_size = k_cache.shape[2]
    if block_size & (block_size - 1):
        raise ValueError(f"k_cache's block_size must be a power of two, got {block_size}")
    if query.device.type == "cpu" and num_tokens:  # range checks cost a device sync: CPU (interpreter) only
        if int(positions.min()) < 0 or int(positions.max()) >= cos_table.shape[0]:
            raise ValueError(f"positions must be in [0, {cos_table.shape[0]})")
        if int(slot_mapping.min()) < 0 or int(slot_mapping.max()) >= k_cache.shape[0] * block_size:
            raise ValueError(f"slot_mapping must be in [0, {k_cache.shape[0] * block_size})")


def rope_write_kv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cos_table: torch.Tensor,
                  sin_table: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Rotate query (N, H, D) and key (N, Hkv, D) in place by RoPE at ``positions`` (N,) (rows of the (P, D)
    tables), then store key and value at ``slot_mapping`` (N,), distinct ``block * block_size + row``, of the
    caches (num_blocks, Hkv, block_size, D). Module docstring; same contract as ``cpu_decode.rope_write_kv``.

    Positions and slots are range checked on the CPU only, to keep CUDA launches sync-free and
    graph-capturable.
    """
    _check_inputs(query, key, value, cos_table, sin_table, positions, k_cache, v_cache, slot_mapping)
    num_tokens, num_heads, head_dim = query.shape
    if num_tokens == 0:
        return
    half = head_dim // 2
    _rope_write_kv_kernel[(num_tokens,)](
        query, key, value, cos_table, sin_table, positions, slot_mapping, k_cache, v_cache,
        num_heads, key.shape[1],
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        cos_table.stride(0), sin_table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HALF=half, BLOCK_SIZE=k_cache.shape[2], BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_KV=triton.next_power_of_2(key.shape[1]), BLOCK_HALF=triton.next_power_of_2(half))
