"""Fused Triton draws: ``gumbel_argmax`` gives the same tokens as ``sampling.gumbel_argmax`` (torch); the draws
straight from (bf16) logits, ``gumbel_sample`` and ``greedy_sample``, against the torch path of
``sampling.sample`` and a float64 oracle on the same noise; bad input rejected.

The Triton cases run on a GPU, or on the CPU under TRITON_INTERPRET=1: without a GPU, a test re-runs
them in a subprocess with that variable set (it must be set before anything imports Triton).
"""

from __future__ import annotations


import pytest
import torch

from effreason import _backends
from effreason.sampler.params import SamplingParams
from effreason.sampler.sampling import sample, uniform_noise

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


# ------------------------------------------------------------------ draws straight from the logits
# (rows, vocab): one column, one block with a ragged tail, several blocks with a ragged one
LOGIT_SHAPES = [(3, 1), (5, 97), (4, 4099), (2, 12289)]
LOGPROB_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}  # float32 inside for all
MIN_MARGIN = 1e-4  # rows whose two best float64 scores are closer may round to either token in float32


def _logits(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed + shape[1])
    logits = (4 * torch.randn(*shape, generator=generator)).to(dtype)
    keys = torch.randint(-2**62, 2**62, (shape[0],), generator=generator)
    steps = torch.randint(0, 1000, (shape[0],), generator=generator)
    return logits.to(DEVICE), keys.to(DEVICE), steps.to(DEVICE)


def _float64_draw(logits, keys, steps, temperature):
    """The oracle on the same noise, in float64: ``argmax(log_softmax(z / T) + G)``, the margin between each
    row's two best scores, and ``log_softmax(z / T)`` (B, V)."""
    log_probs = torch.log_softmax(logits.double().cpu() / temperature, dim=-1)
    gumbel = -torch.log(-torch.log(uniform_noise(keys.cpu(), steps.cpu(), logits.shape[1]).double()))
    top = (log_probs + gumbel).topk(min(2, logits.shape[1]), dim=-1)
    margin = top.values[:, 0] - top.values[:, -1] if logits.shape[1] > 1 else torch.ones(logits.shape[0])
    return top.indices[:, 0], margin, log_probs


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
def test_triton_gumbel_sample_matches_float64_and_torch(shape, dtype, temperature):
    """Tokens equal the float64 oracle's and the torch path's wherever the best two scores are apart;
    log-probs (float32, from logits of any dtype) within float32 rounding of both."""
    from effreason.kernels.gumbel_sampling import gumbel_sample
    logits, keys, steps = _logits(shape, dtype)
    tokens, logprobs = gumbel_sample(logits, keys, steps, temperature)
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    expected, margin, log_probs = _float64_draw(logits, keys, steps, temperature)
    clear = margin > MIN_MARGIN
    assert clear.sum() >= shape[0] - 1 and torch.equal(tokens.cpu()[clear], expected[clear])
    torch.testing.assert_close(logprobs.cpu().double(), log_probs.gather(1, tokens.cpu()[:, None])[:, 0],
                               atol=LOGPROB_TOLERANCE[dtype], rtol=0)
    torch_tokens, torch_logprobs, _ = sample(logits.float(), SamplingParams(temperature=temperature), keys, steps)
    assert torch.equal(tokens.cpu()[clear], torch_tokens.cpu()[clear])
    torch.testing.assert_close(logprobs.cpu()[clear], torch_logprobs.cpu()[clear], atol=LOGPROB_TOLERANCE[dtype], rtol=0)


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
def test_triton_greedy_sample_is_argmax_with_its_logprob(shape, dtype):
    """Exactly ``torch.argmax`` (ties to the lowest index: bf16 logits tie often), log-prob within float32."""
    from effreason.kernels.gumbel_sampling import greedy_sample
    logits, _, _ = _logits(shape, dtype)
    logits[0, shape[1] // 2:] = logits[0].max()  # a tie for the top, not at column 0
    tokens, logprobs = greedy_sample(logits)
    assert torch.equal(tokens, logits.float().argmax(dim=-1))
    expected = torch.log_softmax(logits.double(), -1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs.double(), expected, atol=LOGPROB_TOLERANCE[dtype], rtol=0)


@pytest.mark.skipif(not triton_usable, reason="Triton unusable here (no GPU and no TRITON_INTERPRET=1)")
def test_triton_gumbel_sample_draws_from_the_tempered_softmax():
    """Frequencies of 1000 draws (one stream each) from one bf16 row, against ``softmax(z / T)``: every token
    within 5 standard deviations of its expected count, and their chi-square below its 0.999 quantile."""
    from effreason.kernels.gumbel_sampling import gumbel_sample
    num_draws, temperature = 1000, 0.8
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -1.5, 1.5, 0.25], dtype=torch.bfloat16)
    logits = row.expand(num_draws, -1).contiguous().to(DEVICE)
    keys = torch.arange(num_draws, device=DEVICE) * 7919
    tokens, _ = gumbel_sample(logits, keys, torch.zeros_like(keys), temperature)
    counts = torch.bincount(tokens.cpu(), minlength=row.numel()).double()
    expected = num_draws * torch.softmax(row.double() / temperature, 0)
    assert ((counts - expected).abs() <= 5 * expected.sqrt()).all(), (counts, expected)
    assert ((counts - expected) ** 2 / expected).sum() < 24.3  # chi-square, 7 degrees of freedom, p = 0.999


@pytest.mark.skipif(not _backends.has_triton(), reason="needs Triton")
def test_triton_draws_from_logits_reject_bad_inputs():
    from effreason.kernels.gumbel_sampling import greedy_sample, gumbel_sample
    logits, keys, steps = torch.zeros(3, 8), torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="logits"):
        gumbel_sample(logits.double(), keys, steps)
    with pytest.raises(ValueError, match="logits"):
        greedy_sample(logits[:, :0])
    with pytest.raises(ValueError, match="keys"):
        gumbel_sample(logits, keys[:2], steps)
    with pytest.raises(ValueError, match="temperature"):
        gumbel_sample(logits, keys, steps, 0.0)
