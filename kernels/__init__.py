"""Triton kernels of effreason (installed as ``effreason.kernels``). Import needs Triton; callers check ``effreason._backends.has_triton()`` first."""
