"""The sampler's compute-dtype weight copy: a trainer's float32 master weights sampled in bf16 (``weights_dtype``),
refreshed in place after every optimizer step so the copies never move (captured CUDA graphs stay valid)."""

from __future__ import annotations

import copy

import pytest
import torch
from sampler_models import random_prompts, tiny_qwen2

from effreason.sampler import Sampler, SamplingParams

GREEDY = SamplingParams(n=1, temperature=0.0, max_tokens=12)


def _tokens(results) -> list[list[int]]:
    return [completions[0].token_ids for completions in results]


def test_bf16_copy_samples_what_a_bf16_model_samples(model):
    prompts = random_prompts([5, 9, 3])
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    expected = _tokens(Sampler(bf16_model, kv_cache_tokens=512).generate(prompts, GREEDY))
    sampler = Sampler(model, kv_cache_tokens=512, weights_dtype=torch.bfloat16)
    assert _tokens(sampler.generate(prompts, GREEDY)) == expected
    assert sampler.runner.kv_cache.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_copies_are_refreshed_in_place_after_an_optimizer_step():
    model = tiny_qwen2(tied=True)
    sampler = Sampler(model, kv_cache_tokens=512, weights_dtype=torch.bfloat16)
    prompts = random_prompts([6, 4])
    sampler.generate(prompts, GREEDY)
    pointers = [tensor.data_ptr() for tensor in sampler.model.weights()]
    assert sampler.model.embedding is sampler.model.lm_head.weight  # a tied weight is copied once

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.tensor([prompts[0]]), labels=torch.tensor([prompts[0]])).loss.backward()
    optimizer.step()
    after_step = _tokens(sampler.generate(prompts, GREEDY))

    assert [tensor.data_ptr() for tensor in sampler.model.weights()] == pointers
    for copied, master in zip(sampler.model.weights(), sampler.model.source_weights()):
        assert torch.equal(copied, master.detach().to(torch.bfloat16))
    fresh = Sampler(copy.deepcopy(model).to(torch.bfloat16), kv_cache_tokens=512)
    assert after_step == _tokens(fresh.generate(prompts, GREEDY))


def test_float32_lm_head_over_bf16_layers():
    model = tiny_qwen2(tied=True)
    sampler = Sampler(model, kv_cache_tokens=512, weights_dtype=torch.bfloat16, lm_head_dtype=torch.float32)
    sampler.generate(random_prompts([5]), GREEDY)
    assert sampler.model.lm_head.weight is model.lm_head.weight  # the float32 master itself
    assert sampler.model.embedding.dtype == torch.bfloat16
    assert sampler.runner.kv_cache.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["weights_dtype", "lm_head_dtype"])
@pytest.mark.parametrize("bad", ["bfloat16", torch.int8])
def test_bad_dtypes_name_the_argument(name, bad):
    with pytest.raises(ValueError, match=name):
        Sampler(tiny_qwen2(), **{name: bad})
