"""Which optional backends this installation has: the native extension, CUDA, Triton.

Everything in effreason works with none of them (pure torch); the fused ops and the
sampler use whichever is found. ``effreason.backends()`` reports the findings.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch


@functools.lru_cache(maxsize=None)
def native_module():
    """The compiled extension ``effreason._C`` (which registers ``torch.ops.effreason.*``), or None."""
    if os.environ.get("EFFREASON_DISABLE_NATIVE", "0") == "1":
        return None
    try:
        return importlib.import_module("effreason._C")
    except ImportError:
        return None


def has_native() -> bool:
    """True when ``effreason._C`` was built and imports."""
    return native_module() is not None


def has_native_cuda() -> bool:
    """True when ``effreason._C`` was built with its CUDA kernels."""
    module = native_module()
    return module is not None and bool(getattr(module, "with_cuda", False))


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    """True when Triton imports (kernels then run on a GPU, or on the CPU with TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # triton raises more than ImportError on unsupported platforms
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of ``device``."""
    if not has_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())


def backends() -> dict:
    """Report what this installation found.

    Returns a dict: ``torch`` (version), ``cuda`` (a usable CUDA device), ``native``
    (``effreason._C`` imports), ``native_cuda`` (it has CUDA kernels), ``triton``
    (Triton imports), ``triton_interpret`` (TRITON_INTERPRET=1 is set).
    """
    return {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "native": has_native(),
        "native_cuda": has_native_cuda(),
        "triton": has_triton(),
        "triton_interpret": triton_interpreted(),
    }
