"""Forced lengths: ``min_tokens`` (stop tokens masked until then), per-prompt ``max_tokens`` / ``min_tokens`` in
one ``generate`` call, and long forced completions under KV pressure (preemption), against HF and unforced runs."""

from __future__ import annotations

import pytest
import torch
from sampler_models import VOCAB, hf_greedy, hf_logits, random_prompts, tiny_qwen2
from transformers import Qwen2Config, Qwen2ForCausalLM

from effreason.sampler import Sampler, SamplingParams

LOGPROB_TOLERANCE = 1e-4


def _hf_greedy_min_tokens(model, prompt: list[int], stop: int, new_tokens: int) -> list[int]:
    """HF greedy continuation with ``stop`` as EOS masked for ``new_tokens`` tokens (``min_new_tokens``)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, eos_token_id=stop, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_min_tokens_masks_stop_tokens_like_hf_min_new_tokens(model):
    """Greedy, stop token = a token the unforced greedy run draws early: with ``min_tokens = max_tokens`` every
    completion has exactly ``max_tokens`` tokens, equal to HF's ``min_new_tokens``; a prompt whose greedy run never
    meets the stop token decodes exactly as unforced; trainer log-probs stay those of the unmasked logits."""
    prompts = random_prompts((5, 9, 3))
    unforced = [hf_greedy(model, prompt, 16) for prompt in prompts]
    stop = unforced[0][2]
    sampler = Sampler(model, block_size=4)
    stopped = sampler.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=16, stop_token_ids=(stop,)))
    assert stopped[0][0].finish_reason == "stop" and len(stopped[0][0].token_ids) <= 3
    forced = sampler.generate(prompts, SamplingParams(n=2, temperature=0, max_tokens=16, min_tokens=16,
                                                      stop_token_ids=(stop,)))
    for prompt, free_run, completions in zip(prompts, unforced, forced):
        expected = _hf_greedy_min_tokens(model, prompt, stop, 16)
        if stop not in free_run:
            assert expected == free_run
        logits = hf_logits(model, prompt + expected)[len(prompt) - 1:-1]
        trainer = torch.log_softmax(logits, -1).gather(1, torch.tensor(expected)[:, None])[:, 0]
        for completion in completions:
            assert completion.token_ids == expected and stop not in completion.token_ids
            assert completion.finish_reason == "length"
            torch.testing.assert_close(torch.tensor(completion.trainer_logprobs), trainer, atol=LOGPROB_TOLERANCE,
                                       rtol=0)


def test_min_tokens_when_sampling_masks_the_draw_not_the_trainer_logprobs(model):
    """Temperature 1 with a fifth of the vocabulary as stop tokens: no stop token before ``min_tokens``, one may
    end the completion after; ``logprobs`` are those of the masked distribution, ``trainer_logprobs`` unmasked."""
    stops = tuple(range(0, VOCAB, 5))
    prompts = random_prompts((4, 7))
    params = [SamplingParams(n=4, temperature=1.0, max_tokens=24, min_tokens=minimum, stop_token_ids=stops, seed=5)
              for minimum in (24, 8)]
    results = Sampler(model, block_size=4).generate(prompts, params)
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in results[0])
    assert any(c.finish_reason == "stop" for c in results[1])
    for prompt, own, completions in zip(prompts, params, results):
        for completion in completions:
            tokens = torch.tensor(completion.token_ids)
            assert len(tokens) >= own.min_tokens and not set(completion.token_ids[:own.min_tokens]) & set(stops)
            logits = hf_logits(model, prompt + completion.token_ids)[len(prompt) - 1:-1]
            early = torch.arange(len(tokens))[:, None] < own.min_tokens
            stop_column = torch.zeros(VOCAB, dtype=torch.bool)
            stop_column[list(stops)] = True
            masked = torch.log_softmax(logits.masked_fill(early & stop_column, float("-inf")), -1)
            torch.testing.assert_close(torch.tensor(completion.logprobs), masked.gather(1, tokens[:, None])[:, 0],
                                       atol=LOGPROB_TOLERANCE, rtol=0)
            torch.testing.assert_close(torch.tensor(completion.trainer_logprobs),
                                       torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0],
                                       atol=LOGPROB_TOLERANCE, rtol=0)


def test_per_prompt_lengths_in_one_call_equal_separate_calls(model):
    prompts = random_prompts((6, 2, 11))
    lengths = (3, 17, 9)
    sampler = Sampler(model, block_size=4)
    params = [SamplingParams(n=2, temperature=0, max_tokens=length, min_tokens=length, stop_token_ids=(7,))
              for length in lengths]
    together = sampler.generate(prompts, params)
    for prompt, own, completions in zip(prompts, params, together):
        alone = sampler.generate([prompt], own)[0]
        assert [c.token_ids for c in completions] == [c.token_ids for c in alone]
        assert [len(c.token_ids) for c in completions] == [own.max_tokens] * 2


def test_invalid_lengths_raise_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=-1)
    with pytest.raises(ValueError, match="min_tokens must be <= max_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    sampler = Sampler(tiny_qwen2())
    with pytest.raises(ValueError, match=r"params: 1 SamplingParams for 2 prompts"):
        sampler.generate([[1], [2]], [SamplingParams()])
    with pytest.raises(ValueError, match=r"params\[1\] differs from params\[0\] in temperature"):
        sampler.generate([[1], [2]], [SamplingParams(), SamplingParams(temperature=0.5)])
    with pytest.raises(ValueError, match="params must be a SamplingParams or a list"):
        sampler.generate([[1]], [{"n": 1}])


# ------------------------------------------------------------------ long forced completions under KV pressure
def _long_context_qwen2(max_positions: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
    return Qwen2ForCausalLM(config).eval()


LONG_CASES = [
    pytest.param((1000, 2500, 1800, 3000), 4096, "cpu", id="3k-tokens"),
    pytest.param((32768, 32000), 40960, "cuda", id="32k-tokens",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.fixture
def one_cpu_thread():
    """One intra-op thread, as the training loop gives models this small (``loop._set_cpu_threads``): thousands of
    tiny decode steps on two threads of a busy machine spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("lengths, small_cache, device", LONG_CASES)
def test_long_forced_completions_preempt_and_match_a_run_with_room(lengths, small_cache, device, one_cpu_thread):
    """Greedy completions forced to ``lengths`` (2 samples of each prompt, stop token masked) in a KV cache too small
    for all of them: sequences are preempted and recomputed, and every token equals the run whose cache holds all."""
    model = _long_context_qwen2(max(lengths) + 64).to(device)
    prompts = random_prompts([8 + 5 * index for index in range(len(lengths))], seed=2)
    params = [SamplingParams(n=2, temperature=0, max_tokens=length, min_tokens=length, stop_token_ids=(3,))
              for length in lengths]
    roomy = 2 * sum(len(prompt) + length for prompt, length in zip(prompts, lengths)) + 1024
    runs = {}
    for cache_tokens in (small_cache, roomy):
        sampler = Sampler(model, kv_cache_tokens=cache_tokens)
        runs[cache_tokens] = sampler.generate(prompts, params)
        runs[cache_tokens, "preemptions"] = sampler.last_stats["preemptions"]
    assert runs[small_cache, "preemptions"] > 0 and runs[roomy, "preemptions"] == 0
    for length, pressed, spacious in zip(lengths, runs[small_cache], runs[roomy]):
        assert [len(c.token_ids) for c in pressed] == [length, length]
        assert [c.token_ids for c in pressed] == [c.token_ids for c in spacious]
