"""What to sample: ``SamplingParams``, validated on construction."""

from __future__ import annotations

import dataclasses


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_real(name: str, value, low: float, high: float, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high or value != value:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample ``n`` completions of every prompt.

    * ``n``: completions per prompt (the prompt is prefilled once and its KV blocks shared).
    * ``temperature``: logits are divided by it; ``0`` means greedy (argmax).
    * ``top_p``: nucleus sampling, keep the smallest set of most likely tokens whose
      probability mass reaches ``top_p`` (Holtzman et al. 2020); ``1`` keeps all.
    * ``top_k``: keep the ``top_k`` most likely tokens (ties at the threshold kept); ``0`` keeps all.
    * ``max_tokens``: new tokens per completion (fewer when a stop token or the model's
      context length ends it first).
    * ``min_tokens``: the first ``min_tokens`` tokens of a completion are never stop tokens: their
      logits are set to -inf before the draw (vLLM's ``min_tokens``, HF's ``min_new_tokens``), so
      ``min_tokens = max_tokens`` forces a completion of exactly ``max_tokens`` tokens.
    * ``stop_token_ids``: a sampled token in this set ends the completion (it is kept in the output).
    * ``seed``: makes the run reproducible; completion ``j`` of prompt ``i`` draws its noise
      from a counter-based stream keyed by ``(seed, i, j, step)``, independent of batching.
      ``None`` draws a seed from torch's global generator.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        _check_int("n", self.n, 1)
        _check_int("top_k", self.top_k, 0)
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        object.__setattr__(self, "temperature", _check_real("temperature", self.temperature, 0.0, 1e4, low_open=False))
        object.__setattr__(self, "top_p", _check_real("top_p", self.top_p, 0.0, 1.0, low_open=True))
        try:
            stop = tuple(self.stop_token_ids)
        except TypeError:
            raise ValueError(f"stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}") from None
        for token in stop:
            _check_int("stop_token_ids", token, 0)
        object.__setattr__(self, "stop_token_ids", stop)
        if self.seed is not None:
            _check_int("seed", self.seed, 0)

    @property
    def greedy(self) -> bool:
        """True when ``temperature == 0``: every completion takes the argmax token."""
        return self.temperature == 0.0

    @property
    def truncated(self) -> bool:
        """True when top-k or top-p cut the distribution that a non-greedy draw samples from."""
        return self.top_k > 0 or self.top_p < 1.0


PER_PROMPT_FIELDS = ("max_tokens", "min_tokens")
"""The fields that may differ between the per-prompt ``SamplingParams`` of one ``generate`` call: the draw
itself is batched over every sequence, with one ``n``, temperature, top-k/top-p, stop set and seed."""


def per_prompt_params(params, num_prompts: int) -> list[SamplingParams]:
    """One ``SamplingParams`` per prompt from ``params``: a ``SamplingParams`` for all of them, or a list or
    tuple of ``num_prompts`` that differ only in ``PER_PROMPT_FIELDS`` (``ValueError`` naming ``params``
    otherwise)."""
    if isinstance(params, SamplingParams):
        return [params] * num_prompts
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, SamplingParams) for p in params):
        raise ValueError(f"params must be a SamplingParams or a list of one per prompt, got {type(params).__name__}")
    if len(params) != num_prompts:
        raise ValueError(f"params: {len(params)} SamplingParams for {num_prompts} prompts")
    shared = [field.name for field in dataclasses.fields(SamplingParams) if field.name not in PER_PROMPT_FIELDS]
    for index, prompt_params in enumerate(params[1:], start=1):
        differing = [name for name in shared if getattr(prompt_params, name) != getattr(params[0], name)]
        if differing:
            raise ValueError(f"params[{index}] differs from params[0] in {', '.join(differing)}: per-prompt "
                             f"SamplingParams may differ only in {', '.join(PER_PROMPT_FIELDS)}")
    return list(params)
