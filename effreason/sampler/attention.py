"""Paged attention over the KV cache: the pure-torch reference and the dispatch to fast kernels.

KV cache layout, per layer: ``k_cache, v_cache`` of shape ``(num_blocks, num_kv_heads, block_size,
head_dim)``: block ``b`` holds ``block_size`` consecutive tokens of one sequence, head-major so a
block of one KV head is a contiguous ``(block_size, head_dim)`` tile. Token ``t`` of a sequence
with block table ``T`` lives at block ``T[t // block_size]``, row ``t % block_size``.

Decode attention of sequence ``s`` (context length ``L_s``), query head ``h`` in KV group
``g = h // (num_heads / num_kv_heads)`` (grouped-query attention, Ainslie et al. 2023):

    out[s, h] = sum_{t < L_s} softmax_t(scale * q[s, h] . K[s, g, t]) V[s, g, t]

Backends, fastest first where usable: flash-attn's ``flash_attn_with_kvcache`` (CUDA, block size a
multiple of 256), the Triton kernel ``effreason.kernels.paged_attention`` (CUDA; split-K for few long
sequences), the native CPU op ``torch.ops.effreason.paged_attention_decode`` (from ``csrc/paged_attention``),
this file's torch reference (everywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import torch
import torch.nn.functional as F

from effreason import _backends


@dataclasses.dataclass(slots=True)
class AttentionMetadata:
    """Per-step tensors shared by every layer.

    * ``slot_mapping`` (N,) int64: cache slot ``block * block_size + row`` receiving token n.
    * prefill: ``seq_bounds`` python ``[(start, end)]`` of each sequence in the packed tokens,
      ``cu_seqlens`` (S + 1,) int32 and ``max_seqlen`` for varlen kernels; ``prefix_lens`` python
      ``[c]``: each sequence's leading tokens already in the cache (its packed tokens are positions
      ``c ..``), with ``prefix_tables`` (each sequence's block table) when any ``c > 0``; on CUDA,
      ``padded_layout`` (``padded_layout``'s rows and mask), set by the first layer that pads. With
      ``block_tables`` (S, max_blocks) int32 and ``context_lens`` (S,) int32 (cached + new tokens) set, the
      Triton kernel ``effreason.kernels.paged_prefill`` runs it (``Sampler(paged_prefill=True)``).
    * decode: ``block_tables`` (B, max_blocks) int32, ``context_lens`` (B,) int32, and for the
      torch path ``gather_index`` (B * Hkv * max_blocks,) and ``padding_mask`` (B * Hkv, 1, T).
    """

    is_prefill: bool
    slot_mapping: torch.Tensor
    seq_bounds: list[tuple[int, int]] | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    prefix_lens: list[int] | None = None
    prefix_tables: list[torch.Tensor] | None = None
    block_tables: torch.Tensor | None = None
    context_lens: torch.Tensor | None = None
    gather_index: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None
    padded_layout: tuple[torch.Tensor, torch.Tensor] | None = None


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store ``key, value`` (N, Hkv, D) at cache slots ``slot_mapping`` (N,): block ``s // bs``, row ``s % bs``."""
    block_size = k_cache.shape[2]
    block, row = slot_mapping // block_size, slot_mapping % block_size
    k_cache[block, :, row] = key  # advanced indices around a slice: the indexed view is (N, Hkv, D)
    v_cache[block, :, row] = value


def gather_index(block_tables: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Tiles of ``cache.view(-1, block_size, D)`` for each (sequence, KV head, block): (B * Hkv * MB,)."""
    heads = torch.arange(num_kv_heads, device=block_tables.device)
    return (block_tables.long()[:, None, :] * num_kv_heads + heads[None, :, None]).reshape(-1)


def padding_mask(context_lens: torch.Tensor, num_kv_heads: int, num_slots: int) -> torch.Tensor:
    """Additive mask (B * Hkv, 1, num_slots): 0 for ``t < context_len``, -inf beyond."""
    slots = torch.arange(num_slots, device=context_lens.device)
    beyond = slots[None, :] >= context_lens.long()[:, None]  # (B, T)
    mask = torch.zeros(beyond.shape, dtype=torch.float32, device=context_lens.device)
    mask.masked_fill_(beyond, float("-inf"))
    return mask.repeat_interleave(num_kv_heads, dim=0)[:, None, :]


def attend_gathered(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    index: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention given ``gather_index`` and ``padding_mask``: query (B, H, D) -> (B, H, D).

    Softmax in float32; the output is in the query's dtype.
    """
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    rows = mask.shape[0]  # B * Hkv
    tiles = k_cache.view(-1, block_size, head_dim)
    keys = tiles.index_select(0, index).view(rows, -1, head_dim)  # (B*Hkv, T, D)
    values = v_cache.view(-1, block_size, head_dim).index_select(0, index).view(rows, -1, head_dim)
    grouped = query.reshape(rows, num_heads // num_kv_heads, head_dim)  # (B*Hkv, G, D)
    scores = torch.baddbmm(mask.to(query.dtype), grouped, keys.transpose(1, 2), alpha=scale).float()
    probs = scores.softmax(dim=-1).to(values.dtype)  # (B*Hkv, G, T)
    return torch.bmm(probs, values).view(num_seqs, num_heads, head_dim)


def paged_decode_attention_reference(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                     block_tables: torch.Tensor, context_lens: torch.Tensor,
                                     scale: float) -> torch.Tensor:
    """Pure-torch paged decode attention (formula in the module docstring), the oracle of the kernels.

    query (B, H, D); caches (num_blocks, Hkv, block_size, D); block_tables (B, MB) with entries
    past a sequence's blocks pointing at any valid block; context_lens (B,) in [1, MB * block_size].
    """
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    index = gather_index(block_tables, num_kv_heads)
    mask = padding_mask(context_lens, num_kv_heads, block_tables.shape[1] * block_size)
    return attend_gathered(query, k_cache, v_cache, index, mask, scale)


def cached_context(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """Tokens ``0 .. length-1`` of one sequence from a layer's paged cache: (Hkv, length, D)."""
    block_size = cache.shape[2]
    tiles = cache.index_select(0, table[:-(-length // block_size)])  # (blocks, Hkv, bs, D)
    return tiles.transpose(0, 1).flatten(1, 2)[:, :length]


PADDED_PREFILL_MAX_MASK_BYTES = 256 << 20  # boolean (S, L, L) mask of the one-call CUDA prefill
PADDED_PREFILL_MAX_WASTE = 2.0  # padded rows S * L per real token


def padding_pays(seq_bounds: list[tuple[int, int]]) -> bool:
    """Whether one padded SDPA call suits these sequences: its mask is small and padding at most doubles the rows."""
    longest, total = max(end - start for start, end in seq_bounds), sum(end - start for start, end in seq_bounds)
    return (len(seq_bounds) * longest * longest <= PADDED_PREFILL_MAX_MASK_BYTES
            and len(seq_bounds) * longest <= PADDED_PREFILL_MAX_WASTE * total)


def padded_layout(seq_bounds: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where packed sequences go in a zero-padded batch, for ``padded_causal_attention``.

    Returns ``rows`` (N,): row ``s * L + i`` of token ``i`` of sequence ``s`` (L the longest length),
    and ``visible`` (S, 1, L, L) bool: query ``i`` sees keys ``j <= i`` with ``j < length_s`` (a padded
    query row still sees key 0, so no row is empty).
    """
    lengths = [end - start for start, end in seq_bounds]
    longest = max(lengths)
    rows = torch.cat([torch.arange(length) + s * longest for s, length in enumerate(lengths)]).to(device)
    positions = torch.arange(longest, device=device)
    real_keys = positions < torch.tensor(lengths, device=device)[:, None]  # (S, L)
    visible = (positions[None, :] <= positions[:, None])[None] & real_keys[:, None]  # (S, L queries, L keys)
    return rows, visible[:, None]


def padded_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor,
                            visible: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of packed sequences, query (N, H, D), key/value (N, Hkv, D), in one SDPA call.

    ``rows``, ``visible`` from ``padded_layout``: sequence ``s`` becomes row ``s`` of a zero-padded
    (S, heads, L, D) batch; padded rows are dropped from the output. K/V heads are repeated to the
    query heads: SDPA's memory-efficient CUDA kernel takes a mask but not grouped heads. On CUDA this
    replaces one SDPA call per sequence and layer, whose launches dominate a prefill of many short prompts.
    """
    num_seqs, longest = visible.shape[0], visible.shape[-1]
    group = query.shape[1] // key.shape[1]

    def padded(x: torch.Tensor, repeat: int) -> torch.Tensor:
        out = x.new_zeros(num_seqs * longest, *x.shape[1:])
        out[rows] = x
        out = out.view(num_seqs, longest, *x.shape[1:]).transpose(1, 2)  # (S, heads, L, D)
        return out.repeat_interleave(repeat, dim=1) if repeat > 1 else out

    attended = F.scaled_dot_product_attention(padded(query, 1), padded(key, group), padded(value, group),
                                              attn_mask=visible, scale=scale)
    return attended.transpose(1, 2).reshape(num_seqs * longest, *query.shape[1:])[rows]


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Causal attention of each packed sequence's new tokens (N, H, D) -> (N, H, D).

    A sequence with ``c`` cached leading tokens attends over its whole context read back from the
    cache (its new K/V are written there first): query ``i`` (position ``c + i``) sees keys ``<= c + i``.
    With ``meta.block_tables`` set, one launch of the Triton paged prefill kernel; the torch code below
    is its reference.
    """
    if meta.block_tables is not None:
        from effreason.kernels.paged_prefill import paged_prefill_attention
        return paged_prefill_attention(query, k_cache, v_cache, meta.block_tables, meta.cu_seqlens,
                                       meta.context_lens, meta.max_seqlen, scale)
    flash = _flash_attn()
    no_prefix = meta.prefix_tables is None
    if flash is not None and no_prefix and query.is_cuda and query.dtype in _FLASH_DTYPES:
        return flash.flash_attn_varlen_func(query, key, value, meta.cu_seqlens, meta.cu_seqlens,
                                            meta.max_seqlen, meta.max_seqlen, softmax_scale=scale, causal=True)
    if no_prefix and query.is_cuda and len(meta.seq_bounds) > 1 and padding_pays(meta.seq_bounds):
        if meta.padded_layout is None:  # built by the first layer, shared by the others
            meta.padded_layout = padded_layout(meta.seq_bounds, query.device)
        return padded_causal_attention(query, key, value, *meta.padded_layout, scale)
    out = torch.empty_like(query)
    for index, (start, end) in enumerate(meta.seq_bounds):
        q = query[start:end].transpose(0, 1)  # (H, L, D)
        cached = 0 if no_prefix else meta.prefix_lens[index]
        if cached == 0:
            k, v = key[start:end].transpose(0, 1), value[start:end].transpose(0, 1)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            table, length = meta.prefix_tables[index], cached + end - start
            k, v = (cached_context(cache, table, length) for cache in (k_cache, v_cache))
            positions = torch.arange(length, device=q.device)
            visible = positions[None, :] <= positions[cached:, None]  # (new tokens, context)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=True)
        out[start:end] = attended.transpose(0, 1)
    return out


_FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_BLOCK_MULTIPLE = 256  # flash-attn's paged KV cache takes blocks of a multiple of 256 tokens


@functools.lru_cache(maxsize=None)
def _flash_attn():
    """The flash_attn module when installed (its paged and varlen entry points), else None."""
    try:
        return importlib.import_module("flash_attn")
    except Exception:  # a broken CUDA install raises more than ImportError
        return None


def _has_native_op() -> bool:
    """True when ``effreason._C`` registered ``torch.ops.effreason.paged_attention_decode``."""
    return _backends.has_native() and hasattr(torch.ops.effreason, "paged_attention_decode")


if _has_native_op():
    @torch.library.register_fake("effreason::paged_attention_decode")
    def _paged_attention_decode_fake(query, k_cache, v_cache, block_tables, context_lens, scale):
        return torch.empty_like(query)


DECODE_BACKENDS = ("flash", "triton", "native", "torch")


def usable_decode_backends(device: torch.device, dtype: torch.dtype, block_size: int) -> list[str]:
    """The decode backends usable on ``device``: on CUDA fastest first (``DECODE_BACKENDS`` order).

    CPU: the native op (``csrc/paged_attention/paged_attention.cpp``) when built, then torch; under
    ``TRITON_INTERPRET=1`` also Triton, last (selectable, for tests: it runs the whole Triton path of the
    forward, ``layers.uses_triton``). CUDA: flash-attn (fp16/bf16, block size a multiple of 256), Triton, torch.
    """
    if device.type != "cuda":
        usable = ["native", "torch"] if _has_native_op() else ["torch"]
        return usable + (["triton"] if _backends.triton_usable_on(device) else [])
    flash = _flash_attn() is not None and dtype in _FLASH_DTYPES and block_size % FLASH_BLOCK_MULTIPLE == 0
    return ["flash"] * flash + ["triton"] * _backends.has_triton() + ["torch"]


def decode_attention(backend: str, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Paged decode attention (module docstring) with ``backend``: query (B, H, D) -> (B, H, D)."""
    if backend == "torch":
        return attend_gathered(query, k_cache, v_cache, meta.gather_index, meta.padding_mask, scale)
    if backend == "triton":
        from effreason.kernels.paged_attention import paged_attention_decode
        return paged_attention_decode(query, k_cache, v_cache, meta.block_tables, meta.context_lens, scale)
    if backend == "native":
        return torch.ops.effreason.paged_attention_decode(query, k_cache, v_cache, meta.block_tables,
                                                          meta.context_lens, scale)
    out = _flash_attn().flash_attn_with_kvcache(
        query[:, None], k_cache.transpose(1, 2), v_cache.transpose(1, 2), cache_seqlens=meta.context_lens,
        block_table=meta.block_tables, softmax_scale=scale, causal=True)
    return out[:, 0]
