"""Which optional backends this installation has: the native extension, CUDA, Triton.

Everything in effreason works with none of them (pure torch); the fused ops and the
sampler use whichever is found. ``effreason.backends()`` reports the findings.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

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


def native_cuda_usable(device: torch.device | None = None) -> bool:
    """True when ``effreason._C``'s CUDA kernels launch on ``device`` (default: the current CUDA device).

    The build holds machine code for its target architectures and PTX of the newest, which newer
    GPUs compile at load time; an older GPU than every target has neither, so its first launch
    fails. One tiny launch per device decides, with a warning when it fails: the ``auto`` backends
    then take Triton or torch instead.
    """
    if not has_native_cuda() or not torch.cuda.is_available():
        return False
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        return False
    return _probe_native_cuda(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _probe_native_cuda(device_index: int) -> bool:
    device = torch.device("cuda", device_index)
    try:
        _tiny_native_launch(device)
    except RuntimeError as error:
        major, minor = torch.cuda.get_device_capability(device)
        warnings.warn(
            f"effreason._C's CUDA kernels cannot run on {torch.cuda.get_device_name(device)} (sm_{major}{minor}): "
            f"{str(error).splitlines()[0]}. Using the Triton or torch paths instead; rebuild with "
            f"EFFREASON_CUDA_ARCHS=\"{major}{minor}\" for the native kernels.",
            RuntimeWarning, stacklevel=3,
        )
        return False
    return True


def _tiny_native_launch(device: torch.device) -> None:
    """One launch of the smallest native CUDA kernel (the segment op), waited for."""
    correct = torch.ones(2, dtype=torch.bool, device=device)
    lengths = torch.ones(2, dtype=torch.float32, device=device)
    torch.ops.effreason.length_penalized_rloo(correct, lengths, 2, 0.5)
    torch.cuda.synchronize(device)


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
