"""``RolloutEngine``: the paged sampler and the HF ``generate()`` fallback serve the same completions."""

from __future__ import annotations

import pytest

from effreason.models import load_checkpoint
from effreason.train.rollout import RolloutEngine, SamplingParams


def test_both_backends_force_the_same_greedy_lengths(tiny_model_dir):
    """``min_tokens = max_tokens`` with stop tokens the unforced greedy run draws first: HF's ``min_new_tokens``
    and the sampler's mask give the same forced completions."""
    model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    prompts = [[5, 9, 14, 3], [20, 7]]
    stops = (3, 7)
    unforced = RolloutEngine(model, pad_token_id=1).generate(prompts, SamplingParams(temperature=0, max_tokens=12,
                                                                                      stop_token_ids=stops))
    assert all(len(group[0].token_ids) < 12 for group in unforced)
    params = SamplingParams(temperature=0, max_tokens=12, min_tokens=12, stop_token_ids=stops)
    results = {backend: RolloutEngine(model, pad_token_id=1, backend=backend).generate(prompts, params)
               for backend in ("sampler", "hf")}
    tokens = {backend: [[c.token_ids for c in group] for group in groups] for backend, groups in results.items()}
    assert tokens["sampler"] == tokens["hf"]
    assert all(len(c.token_ids) == 12 and not set(c.token_ids) & set(stops) for group in results["hf"] for c in group)


def test_per_prompt_params_need_the_sampler(tiny_model_dir):
    model, _, _ = load_checkpoint(tiny_model_dir, device="cpu", dtype="float32")
    engine = RolloutEngine(model, pad_token_id=1, backend="hf")
    with pytest.raises(ValueError, match="per-prompt SamplingParams need the paged sampler"):
        engine.generate([[5], [6]], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=3)])
