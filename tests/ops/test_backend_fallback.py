"""The ``auto`` backends leave the native CUDA kernels alone on a GPU they cannot launch on.

No GPU is needed: the CUDA queries and the probe launch are replaced by ones that answer as an
sm_75 card would for a build of sm_80/sm_90 machine code and compute_90 PTX (the launch fails
with "no kernel image is available for execution on the device")."""

from __future__ import annotations

import pytest
import torch

from effreason import _backends
from effreason.ops.fused import resolve_backend
from effreason.ops.segment import native_segment_available

GPU = torch.device("cuda", 0)


@pytest.fixture
def old_gpu(monkeypatch):
    def no_kernel_image(device):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(_backends, "has_native_cuda", lambda: True)
    monkeypatch.setattr(_backends, "_tiny_native_launch", no_kernel_image)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    _backends._probe_native_cuda.cache_clear()
    yield
    _backends._probe_native_cuda.cache_clear()


def test_a_failed_launch_turns_the_native_cuda_kernels_off_with_one_warning(old_gpu):
    with pytest.warns(RuntimeWarning, match=r"cannot run on Tesla T4 \(sm_75\).*EFFREASON_CUDA_ARCHS=\"75\""):
        assert not _backends.native_cuda_usable(GPU)
    assert not _backends.native_cuda_usable()  # cached: no second launch, no second warning


def test_auto_backends_fall_back(old_gpu):
    with pytest.warns(RuntimeWarning):
        assert resolve_backend("auto", GPU) in ("triton", "torch")
    assert not native_segment_available(GPU)
    with pytest.raises(ValueError, match="backend='cuda' needs"):
        resolve_backend("cuda", GPU)


def test_a_launch_that_works_keeps_them(monkeypatch):
    monkeypatch.setattr(_backends, "has_native_cuda", lambda: True)
    monkeypatch.setattr(_backends, "_tiny_native_launch", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _backends._probe_native_cuda.cache_clear()
    try:
        assert _backends.native_cuda_usable(GPU)
        assert not _backends.native_cuda_usable(torch.device("cpu"))
    finally:
        _backends._probe_native_cuda.cache_clear()
