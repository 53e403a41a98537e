"""KV-cache allocation: its size, and on the CPU memory the kernel may back with huge pages.

One tensor holds every layer's K and V: ``(layers, 2, num_blocks + 1, Hkv, block_size, D)``. Block ``b`` of
layer ``l`` is ``cache[l, 0, b]`` (keys) and ``cache[l, 1, b]`` (values), head-major so one KV head of a
block is a contiguous ``(block_size, D)`` tile (``attention.py``). The last block is scratch: the padded
rows of a CUDA-graph replay write there (``cuda_graph.py``).
"""

from __future__ import annotations

import math
import mmap
import sys

import torch

CPU_DEFAULT_KV_TOKENS = 65536
HUGE_PAGE_BYTES = 2 << 20  # a transparent huge page on x86-64 Linux


def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Cache bytes one token takes over all layers: ``2 * layers * Hkv * D * element size`` (K and V)."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype.itemsize


def capacity_tokens(device: torch.device, token_bytes: int, memory_fraction: float) -> int:
    """Default capacity: on CUDA ``memory_fraction`` of the free GPU memory over ``token_bytes``, on the CPU
    ``CPU_DEFAULT_KV_TOKENS``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * memory_fraction) // token_bytes
    return CPU_DEFAULT_KV_TOKENS


def cpu_zeros_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in memory the kernel may back with 2 MiB transparent huge pages (Linux).

    Decode attention reads every sequence's K/V tiles scattered over the whole cache; with 4 KiB pages
    nearly each tile is a TLB miss, a two-level page walk on a VM. ``madvise(MADV_HUGEPAGE)`` on a private
    anonymous mapping asks for huge pages even where THP is "madvise" only. Elsewhere, or for less than a
    huge page, plain ``torch.zeros``. The tensor keeps the mapping alive.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE") or nbytes < HUGE_PAGE_BYTES:
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled
    region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE_BYTES  # huge pages cover 2 MiB-aligned ranges
    return raw[start:start + nbytes].view(dtype).view(shape)


def allocate(num_layers: int, num_blocks: int, num_kv_heads: int, block_size: int, head_dim: int,
             dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed cache (layers, 2, num_blocks + 1, Hkv, block_size, D): ``num_blocks`` blocks and the scratch one."""
    shape = (num_layers, 2, num_blocks + 1, num_kv_heads, block_size, head_dim)
    if device.type == "cpu":
        return cpu_zeros_on_huge_pages(shape, dtype)
    return torch.zeros(shape, dtype=dtype, device=device)
