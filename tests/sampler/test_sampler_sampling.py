"""The sampler's token draws follow softmax(logits / T) truncated by top-k / top-p (statistical test)."""

from __future__ import annotations

import math

import pytest
import torch

from effreason.sampler import SamplingParams
from effreason.sampler.sampling import sample, stream_keys, uniform_noise

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.25, -1.0, -3.0])
NUM_DRAWS = 60_000


def _expected(temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Reference distribution in float64 from the definitions (sorted, so top-k/top-p are prefixes)."""
    probs = torch.softmax(LOGITS.double() / temperature, 0)
    keep = len(probs) if top_k == 0 else top_k
    probs = torch.cat([probs[:keep] / probs[:keep].sum(), torch.zeros(len(probs) - keep, dtype=torch.float64)])
    mass_before = torch.cumsum(probs, 0) - probs
    probs = torch.where(mass_before < top_p, probs, torch.zeros_like(probs))
    return probs / probs.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (0.7, 5, 0.9),
])
def test_empirical_distribution_matches_softmax(temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    keys = stream_keys(11, torch.arange(NUM_DRAWS), torch.zeros(NUM_DRAWS, dtype=torch.long))
    tokens, logprobs, trainer = sample(LOGITS.expand(NUM_DRAWS, -1), params, keys, torch.zeros_like(keys))
    expected = _expected(temperature, top_k, top_p)
    counts = torch.bincount(tokens, minlength=len(LOGITS)).double()
    assert bool((counts[expected == 0] == 0).all())  # truncated tokens are never drawn
    support = expected > 0
    chi2 = float((((counts - NUM_DRAWS * expected) ** 2)[support] / (NUM_DRAWS * expected[support])).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof) + 10, (chi2, counts / NUM_DRAWS, expected)  # p < 1e-6 fails
    torch.testing.assert_close(logprobs.double(), expected.log()[tokens], atol=1e-5, rtol=0)
    full = torch.log_softmax(LOGITS.double() / temperature, 0)
    torch.testing.assert_close(trainer.double(), full[tokens], atol=1e-5, rtol=0)


def test_greedy_takes_the_argmax_and_reports_temperature_one_logprobs():
    logits = torch.randn(5, 11)
    keys = torch.arange(5)
    tokens, logprobs, trainer = sample(logits, SamplingParams(temperature=0), keys, keys)
    assert torch.equal(tokens, logits.argmax(-1)) and bool((logprobs == 0).all())
    torch.testing.assert_close(trainer, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])


def test_noise_is_uniform_reproducible_and_distinct_per_stream_and_step():
    keys = stream_keys(0, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    noise = uniform_noise(keys, torch.zeros(3, dtype=torch.long), 50_000)
    assert bool(((noise > 0) & (noise < 1)).all())
    torch.testing.assert_close(noise.mean(1), torch.full((3,), 0.5), atol=0.01, rtol=0)
    histogram = torch.histc(noise[0], bins=10, min=0, max=1) / noise.shape[1]
    torch.testing.assert_close(histogram, torch.full((10,), 0.1), atol=0.01, rtol=0)
    assert torch.equal(noise, uniform_noise(keys, torch.zeros(3, dtype=torch.long), 50_000))
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    next_step = uniform_noise(keys, torch.ones(3, dtype=torch.long), 50_000)
    assert abs(float(torch.corrcoef(torch.stack((noise[0], next_step[0])))[0, 1])) < 0.02
