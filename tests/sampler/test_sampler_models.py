"""Model families (``effreason.sampler.models``): every registered family's greedy output equals HF
``generate()`` token for token (fp32, CPU), and a model of another type is refused with the supported list.

Adding a family: its file in ``effreason/sampler/models/``, its entry in ``FAMILIES`` and a tiny model here.
"""

from __future__ import annotations

import pytest
import torch
from sampler_models import hf_greedy, random_prompts, tiny_llama, tiny_qwen2, tiny_qwen3
from transformers import GPT2Config, GPT2LMHeadModel

from effreason.sampler import Sampler, SamplingParams
from effreason.sampler.models import FAMILIES, paged_model

TINY_MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3}


def test_every_family_has_a_tiny_model_here():
    assert sorted(TINY_MODELS) == sorted(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_greedy_output_equals_hf_generate(model_type):
    model = TINY_MODELS[model_type]()
    assert model.config.model_type == model_type
    prompts = random_prompts((1, 6, 17, 30))
    results = Sampler(model, block_size=4, kv_cache_tokens=1024).generate(
        prompts, SamplingParams(n=2, temperature=0, max_tokens=24))
    for prompt, completions in zip(prompts, results):
        expected = hf_greedy(model, prompt, 24)
        assert [c.token_ids for c in completions] == [expected, expected]


def test_qwen3_reads_its_q_and_k_norms():
    """The adapter feeds ``q_norm`` / ``k_norm`` into the layer: changing one changes the output, like HF's."""
    model = tiny_qwen3()
    prompt = random_prompts((9,), seed=2)[0]
    params = SamplingParams(temperature=0, max_tokens=12)
    before = Sampler(model).generate([prompt], params)[0][0].token_ids
    with torch.no_grad():
        model.model.layers[0].self_attn.k_norm.weight.mul_(4.0)
    after = Sampler(model).generate([prompt], params)[0][0].token_ids
    assert after == hf_greedy(model, prompt, 12) and after != before


def test_an_unsupported_model_type_is_a_value_error_listing_the_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"supported model_type \(llama, qwen2, qwen3\), got 'gpt2'"):
        paged_model(model)
    with pytest.raises(ValueError, match="got a Linear without an HF config"):
        Sampler(torch.nn.Linear(2, 2))
