"""Fused Triton Gumbel-max kernel: the same tokens as ``sampling.gumbel_argmax`` (torch), bad input rejected.

The Triton cases run on a GPU, or on the CPU under TRITON_INTERPRET=1: without a GPU, a test re-runs
them in a subprocess with that variable set (it must be set before anything imports Triton).
"""

from __future__ import annotations


import pytest
import torch

from effreason import _backends
from effreason.sampler.sampling import uniform_noise

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
triton_usable = _backends.triton_usable_on(DEVICE)

# (rows, vocab): one block, several blocks with a ragged tail, a single column
SHAPES = [(5, 96), (3, 1000), (2, 4097), (1, 1)]


def _torch_gumbel_argmax(log_probs, keys, steps):
    """The torch formula, written out here so the CUDA dispatch inside ``sampling`` is not what is compared."""
    noise = uniform_noise(keys, steps, log_probs.shape[-1])
    return (log_probs - torch.log(-torch.log(noise))).argmax(dim=-1)


@pytest.mark.skipif(triton_usable or not _backends.has_triton(), reason="the triton cases run directly")
def test_triton_cases_under_the_interpreter(run_triton_cases_interpreted):
    run_triton_cases_interpreted(__file__)


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_gumbel_matches_torch(shape):
    from effreason.kernels.gumbel_sampling import gumbel_argmax
    num_rows, vocab = shape
    generator = torch.Generator().manual_seed(vocab)
    log_probs = torch.log_softmax(3 * torch.randn(num_rows, vocab, generator=generator), dim=-1)
    log_probs[0, : vocab // 3] = float("-inf")  # truncated (top-k / top-p) entries never win
    keys = torch.randint(-2**62, 2**62, (num_rows,), generator=generator)
    steps = torch.randint(0, 1000, (num_rows,), generator=generator)
    log_probs, keys, steps = log_probs.to(DEVICE), keys.to(DEVICE), steps.to(DEVICE)
    assert torch.equal(gumbel_argmax(log_probs, keys, steps), _torch_gumbel_argmax(log_probs, keys, steps))


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_gumbel_rejects_bad_inputs():
    from effreason.kernels.gumbel_sampling import gumbel_argmax
    log_probs, keys, steps = torch.zeros(3, 8), torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="log_probs"):
        gumbel_argmax(log_probs.double(), keys, steps)
    with pytest.raises(ValueError, match="keys"):
        gumbel_argmax(log_probs, keys[:2], steps)
    with pytest.raises(ValueError, match="steps"):
        gumbel_argmax(log_probs, keys, steps.int())
