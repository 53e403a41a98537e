"""``EvalConfig``: every setting of ``python -m effreason.eval``, validated on construction.

The command line (``cli.py``) mirrors these fields one to one (``--max-new-tokens`` for
``max_new_tokens``). Defaults follow the paper's evaluation protocol: temperature 0.6, up to
32,768 new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from effreason.data.scoring import DEFAULT_ANSWER_KIND
from effreason.grading import ANSWER_KINDS
from effreason.sampler import SamplingParams


def _require_int(name: str, value, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass
class EvalConfig:
    """One evaluation: a model, the datasets, and how responses are sampled."""

    model: str
    data: list[str] = field(default_factory=lambda: ["toy"])
    n: int = 1
    temperature: float = 0.6
    max_new_tokens: int = 32768
    seed: int = 0
    baseline: str | None = None
    json: str | None = None
    plot: str | None = None
    max_problems: int | None = None
    force_answer: bool = False
    prompt_budget: int | None = None
    question_field: str | None = None
    answer_field: str | None = None
    answer_kind: str = DEFAULT_ANSWER_KIND
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = False

    def __post_init__(self):
        if not self.data:
            raise ValueError("data must name at least one dataset")
        _require_int("n", self.n, 1)
        _require_int("max_new_tokens", self.max_new_tokens, 1)
        _require_int("seed", self.seed, 0)
        _require_int("max_problems", self.max_problems, 1, optional=True)
        _require_int("prompt_budget", self.prompt_budget, 1, optional=True)
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")

    def sampling_params(self, stop_token_ids: tuple[int, ...]) -> SamplingParams:
        return SamplingParams(n=self.n, temperature=self.temperature, max_tokens=self.max_new_tokens,
                              stop_token_ids=stop_token_ids, seed=self.seed)

    def settings(self) -> dict:
        """The settings that make two evaluations comparable (recorded in the report)."""
        names = ("data", "n", "temperature", "max_new_tokens", "seed", "max_problems", "force_answer", "prompt_budget",
                 "answer_kind")
        return {name: getattr(self, name) for name in names}
