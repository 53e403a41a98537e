"""Token sampling without host syncs: temperature, top-k, top-p and the Gumbel-max trick.

Noise comes from a counter-based generator (the SplitMix64 finaliser, Steele et al. 2014) keyed by
``(stream key, step, vocabulary index)``: completion ``j`` of prompt ``i`` gets the same numbers
whatever batch it lands in, so a seeded run is reproducible under any batching or preemption.

Drawing ``argmax(log q + G)`` with i.i.d. standard Gumbel ``G = -log(-log U)`` samples exactly from
``q`` (Gumbel 1954; Maddison et al. 2014), with no sort or multinomial and no sync.
"""

from __future__ import annotations

import torch

from effreason import _backends
from effreason.sampler import cpu_decode
from effreason.sampler.params import SamplingParams


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX_1 = _signed(0xBF58476D1CE4E5B9)
_MIX_2 = _signed(0x94D049BB133111EB)
UNIFORM_BITS = 23  # random bits per uniform (``uniform_noise``)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 (wrapping multiplication): a bijective 64-bit hash.

    Returns a new tensor; after the first step it is updated in place (fewer (B, V) temporaries).
    """
    x = x ^ _shift_right(x, 30)
    x.mul_(_MIX_1)
    x.bitwise_xor_(_shift_right(x, 27))
    x.mul_(_MIX_2)
    return x.bitwise_xor_(_shift_right(x, 31))


def stream_keys(seed: int, prompt_indices: torch.Tensor, sample_indices: torch.Tensor) -> torch.Tensor:
    """int64 key of each (prompt, sample) stream: ``mix64(mix64(seed + G*prompt) + G*sample)``."""
    base = mix64(prompt_indices.long() * _GOLDEN + seed)
    return mix64(base + sample_indices.long() * _GOLDEN)


def row_streams(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``mix64(key * G + step)``: the int64 stream of each row at this step, ``keys, steps`` (B,) int64."""
    return mix64(keys * _GOLDEN + steps)


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), float32 (B, V): ``(top 23 bits of mix64(row + G*v) + 0.5) / 2^23``.

    23 bits keep ``k + 0.5`` exact in float32, so U lies in [2^-24, 1 - 2^-24]: never 0 or 1, whose
    Gumbel noise would be infinite (with 24 bits, ``2^24 - 0.5`` rounds to ``2^24`` and U = 1).

    ``row = row_streams(keys, steps)`` per sequence, ``keys`` and ``steps`` (B,) int64.
    """
    rows = row_streams(keys, steps)  # (B,)
    columns = torch.arange(vocab_size, device=keys.device, dtype=torch.int64) * _GOLDEN
    bits = mix64(rows[:, None] + columns[None, :])  # (B, V)
    return _shift_right(bits, 64 - UNIFORM_BITS).float().add_(0.5).mul_(1.0 / (1 << UNIFORM_BITS))


def truncate_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k, then outside the top-p nucleus, to -inf: (B, V) -> (B, V).

    Top-k keeps logits >= the k-th largest (ties kept). Top-p (Holtzman et al. 2020) keeps, in
    descending order, every token whose preceding probability mass is < ``top_p``: the smallest
    prefix whose mass reaches ``top_p``. Order as in vLLM: temperature, top-k, top-p.
    """
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scaled.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V)
        drop = torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, order, mass_before >= top_p)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def gumbel_argmax(log_probs: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``argmax_v(log_probs[b, v] - log(-log U[b, v]))`` with ``U = uniform_noise(keys, steps, V)``: (B,) int64.

    On CUDA with Triton, the fused one-pass kernel ``effreason.kernels.gumbel_sampling`` (same numbers);
    on the CPU in float32, the native op of ``cpu_decode`` (same uniforms, logs within about 1 ulp).
    """
    if cpu_decode.usable(log_probs):
        return cpu_decode.gumbel_argmax(log_probs, keys, steps)
    if log_probs.is_cuda and _backends.has_triton():
        from effreason.kernels.gumbel_sampling import gumbel_argmax as fused_gumbel_argmax
        return fused_gumbel_argmax(log_probs, keys, steps)
    gumbel = uniform_noise(keys, steps, log_probs.shape[-1]).log_().neg_().log_().neg_()  # (B, V)
    return gumbel.add_(log_probs).argmax(dim=-1)


def mask_stop_tokens(logits: torch.Tensor, stop_token_ids: tuple[int, ...], early: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, V) with the stop tokens' columns set to -inf in the rows where ``early`` (B,) bool is true
    (a stop id outside the vocabulary is never drawn anyway)."""
    stop = torch.tensor([t for t in stop_token_ids if t < logits.shape[-1]], dtype=torch.long, device=logits.device)
    masked = logits.clone()
    masked[:, stop] = logits[:, stop].masked_fill(early[:, None], float("-inf"))
    return masked


def sample(logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, steps: torch.Tensor,
           min_tokens: torch.Tensor | None = None, triton: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` (B, V), in the model's dtype (float32 inside).

    Returns ``tokens`` (B,) int64, ``logprobs`` (B,) = ``log q(token)`` with ``q`` the truncated,
    renormalised ``softmax(logits / T)`` it was drawn from (0 for greedy, a point mass), and
    ``trainer_logprobs`` (B,) = ``log_softmax(logits / T)[token]`` untruncated (T = 1 for greedy), float32.
    ``min_tokens`` (B,) int64: a row whose step is below it draws no stop token (``mask_stop_tokens``,
    part of the truncation: ``q`` is masked, ``trainer_logprobs`` are not).

    With ``triton`` (the GPU path, ``layers.uses_triton``), a greedy or untruncated draw without
    ``min_tokens`` is one pass of the kernel ``effreason.kernels.gumbel_sampling`` over the logits as they
    are (no float32 copy); the torch code below is its reference.
    """
    if triton and min_tokens is None and (params.greedy or not params.truncated):
        from effreason.kernels.gumbel_sampling import greedy_sample, gumbel_sample
        if params.greedy:
            tokens, trainer = greedy_sample(logits)
            return tokens, torch.zeros_like(trainer), trainer
        tokens, logprobs = gumbel_sample(logits, keys, steps, params.temperature)
        return tokens, logprobs, logprobs
    logits = logits.float()
    early = None if min_tokens is None else steps < min_tokens  # (B,) rows that may not stop yet
    if params.greedy:
        allowed = logits if early is None else mask_stop_tokens(logits, params.stop_token_ids, early)
        tokens = allowed.argmax(dim=-1)
        full = torch.log_softmax(logits, dim=-1)
        return tokens, torch.zeros_like(full[:, 0]), full.gather(1, tokens[:, None])[:, 0]
    scaled = logits if params.temperature == 1.0 else logits / params.temperature
    truncated = params.truncated or early is not None
    if not truncated and cpu_decode.usable(scaled):  # drawn from the full distribution: one native pass
        tokens, logprobs = cpu_decode.gumbel_sample(scaled, keys, steps)
        return tokens, logprobs, logprobs
    full = torch.log_softmax(scaled, dim=-1)
    if truncated:
        allowed = scaled if early is None else mask_stop_tokens(scaled, params.stop_token_ids, early)
        drawn_from = torch.log_softmax(truncate_logits(allowed, params.top_k, params.top_p), dim=-1)
    else:
        drawn_from = full
    tokens = gumbel_argmax(drawn_from, keys, steps)
    picked = tokens[:, None]
    return tokens, drawn_from.gather(1, picked)[:, 0], full.gather(1, picked)[:, 0]
