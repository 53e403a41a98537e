"""Sampler end to end against Hugging Face on tiny random models (fp32, CPU).

Greedy outputs must equal HF ``generate()`` token for token; returned log-probs must equal a
teacher-forced HF forward within 1e-4; seeded sampling must be reproducible.
"""

from __future__ import annotations

import pytest
import torch
from sampler_models import hf_greedy, hf_logits, random_prompts, tiny_llama, tiny_qwen2, tiny_qwen3
from transformers import Qwen2Config, Qwen2ForCausalLM

from effreason import _backends
from effreason.sampler import Sampler, SamplingParams, attention, engine

LENGTHS = (1, 5, 16, 17, 30)
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(params=["default", "torch"])
def backend(request, monkeypatch):
    """Run each engine test with the installation's decode backend and with the torch reference."""
    if request.param == "torch":
        monkeypatch.setattr(attention, "usable_decode_backends", lambda device, dtype, block_size: ["torch"])
    return request.param


def _check_greedy(model, sampler, prompts, n, new_tokens):
    results = sampler.generate(prompts, SamplingParams(n=n, temperature=0, max_tokens=new_tokens))
    assert len(results) == len(prompts)
    for prompt, completions in zip(prompts, results):
        expected = hf_greedy(model, prompt, new_tokens)
        logits = hf_logits(model, prompt + expected)[len(prompt) - 1:-1]
        expected_logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(expected)[:, None])[:, 0]
        assert len(completions) == n
        for completion in completions:
            assert completion.token_ids == expected
            assert completion.finish_reason == "length"
            assert completion.logprobs == [0.0] * new_tokens
            torch.testing.assert_close(torch.tensor(completion.trainer_logprobs), expected_logprobs,
                                       atol=LOGPROB_TOLERANCE, rtol=0)


def test_greedy_matches_hf_generate(model, backend):
    sampler = Sampler(model, block_size=4, kv_cache_tokens=1024)
    _check_greedy(model, sampler, random_prompts(LENGTHS), n=3, new_tokens=20)
    assert sampler.last_stats["preemptions"] == 0
    assert sampler.last_stats["peak_blocks"] < sampler.last_stats["peak_unshared_blocks"]


def test_greedy_matches_hf_under_kv_pressure_with_preemption(model, backend):
    sampler = Sampler(model, block_size=4, kv_cache_tokens=120, max_num_seqs=8)
    _check_greedy(model, sampler, random_prompts(LENGTHS, seed=1), n=3, new_tokens=20)
    assert sampler.last_stats["preemptions"] > 0


def test_tied_embeddings_and_more_samples_than_sequence_slots():
    model = tiny_qwen2(tied=True)
    _check_greedy(model, Sampler(model, max_num_seqs=2), random_prompts((7, 3)), n=3, new_tokens=8)


def test_train_mode_with_dropout_samples_the_eval_model():
    model = tiny_qwen2()
    expected = hf_greedy(model, [1, 2, 3], 10)
    model.config.attention_dropout = 0.5
    model.train()
    result = Sampler(model).generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10))
    assert result[0][0].token_ids == expected


def test_sampled_logprobs_match_teacher_forced_hf(model, backend):
    params = SamplingParams(n=2, temperature=0.8, top_k=20, top_p=0.9, max_tokens=12, seed=3)
    prompts = random_prompts((4, 9))
    results = Sampler(model, block_size=4).generate(prompts, params)
    for prompt, completions in zip(prompts, results):
        for completion in completions:
            tokens = torch.tensor(completion.token_ids)
            scaled = hf_logits(model, prompt + completion.token_ids)[len(prompt) - 1:-1] / params.temperature
            trainer = torch.log_softmax(scaled, -1).gather(1, tokens[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(completion.trainer_logprobs), trainer,
                                       atol=LOGPROB_TOLERANCE, rtol=0)
            kept = _top_k_top_p_mask(scaled.double(), params.top_k, params.top_p)
            truncated = torch.log_softmax(scaled.double().masked_fill(~kept, float("-inf")), -1)
            assert bool(kept.gather(1, tokens[:, None]).all())
            torch.testing.assert_close(torch.tensor(completion.logprobs, dtype=torch.float64),
                                       truncated.gather(1, tokens[:, None])[:, 0], atol=LOGPROB_TOLERANCE, rtol=0)


def _top_k_top_p_mask(scaled, top_k, top_p):
    """Reference: keep the top_k largest, then the smallest descending prefix with mass >= top_p."""
    kept = torch.zeros_like(scaled, dtype=torch.bool)
    for row, logits in enumerate(scaled):
        order = logits.argsort(descending=True)[:top_k]
        probs = torch.softmax(logits[order], 0)
        mass = 0.0
        for token, prob in zip(order.tolist(), probs.tolist()):
            if mass >= top_p:
                break
            kept[row, token] = True
            mass += prob
    return kept


def test_seeded_sampling_is_reproducible_and_batching_invariant(model):
    prompts = random_prompts((6, 11, 2))
    params = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=7)
    first = Sampler(model).generate(prompts, params)
    again = Sampler(model, block_size=4, kv_cache_tokens=96, max_num_seqs=3).generate(prompts, params)
    other = Sampler(model).generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=8))
    tokens = lambda results: [[c.token_ids for c in completions] for completions in results]
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)
    assert len({tuple(c.token_ids) for c in first[0]}) > 1  # the n samples differ


def test_stop_token_ends_a_completion_and_is_kept(model):
    prompt = random_prompts((5,))[0]
    greedy = hf_greedy(model, prompt, 2)
    stop = greedy[1]
    params = SamplingParams(n=2, temperature=0, max_tokens=10, stop_token_ids=(stop,))
    completion = Sampler(model).generate([prompt], params, progress=True)[0][1]
    expected = greedy[:greedy.index(stop) + 1]  # the first greedy token may already be the stop token
    assert completion.token_ids == expected and completion.finish_reason == "stop"


def test_decode_rounds_of_many_steps_sample_what_single_steps_do(model, monkeypatch):
    """``DECODE_WINDOW`` steps per round, stop tokens drawn mid-round included: the tokens and log-probs of
    one step per round."""
    prompts = random_prompts((6, 11, 2, 19))
    free_run = Sampler(model).generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=20, seed=3))
    stop = free_run[1][0].token_ids[4]  # drawn mid-round by at least one sample
    params = SamplingParams(n=3, temperature=1.0, max_tokens=20, seed=3, stop_token_ids=(stop,))
    rounds = {}
    for window in (1, engine.DECODE_WINDOW):
        monkeypatch.setattr(engine, "DECODE_WINDOW", window)
        rounds[window] = Sampler(model, block_size=4).generate(prompts, params)
    single, many = rounds[1], rounds[engine.DECODE_WINDOW]
    assert any(c.finish_reason == "stop" and len(c.token_ids) < 20 for completions in many for c in completions)
    for single_completions, many_completions in zip(single, many):
        for one, other in zip(single_completions, many_completions):
            assert (one.token_ids, one.finish_reason) == (other.token_ids, other.finish_reason)
            torch.testing.assert_close(torch.tensor(other.logprobs), torch.tensor(one.logprobs), atol=1e-6, rtol=0)


def test_context_length_ends_a_completion():
    model = tiny_qwen2()
    prompt = random_prompts((model.config.max_position_embeddings - 3,))[0]
    completion = Sampler(model).generate([prompt], SamplingParams(temperature=0, max_tokens=10))[0][0]
    assert len(completion.token_ids) == 3 and completion.finish_reason == "length"


def test_weight_updates_are_seen_without_reallocating_the_cache():
    model = tiny_qwen2()
    sampler = Sampler(model, kv_cache_tokens=512)
    params = SamplingParams(temperature=0, max_tokens=12)
    before = sampler.generate([[4, 5, 6]], params)[0][0].token_ids
    cache = sampler.runner.kv_cache.data_ptr()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.tensor([[4, 5, 6]])).logits.sum().backward()
    optimizer.step()
    after = sampler.generate([[4, 5, 6]], params)[0][0].token_ids
    assert after == hf_greedy(model, [4, 5, 6], 12) and after != before
    assert sampler.runner.kv_cache.data_ptr() == cache


def test_invalid_inputs_raise_value_errors():
    model = tiny_qwen2()
    sampler = Sampler(model, kv_cache_tokens=64, block_size=16)
    params = SamplingParams(max_tokens=4)
    with pytest.raises(ValueError, match=r"prompts\[1\].*KV cache"):
        sampler.generate([[1, 2], [3] * 65], params)
    with pytest.raises(ValueError, match=r"prompts\[0\].*context"):
        Sampler(model).generate([[1] * model.config.max_position_embeddings], params)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        sampler.generate([[1, 10_000]], params)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        sampler.generate([[]], params)
    with pytest.raises(ValueError, match="params"):
        sampler.generate([[1]], {"n": 1})
    with pytest.raises(ValueError, match="block_size"):
        Sampler(model, block_size=12)
    with pytest.raises(ValueError, match="model"):
        Sampler(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="attention_backend"):
        Sampler(model, attention_backend="paged")
    if "triton" not in attention.usable_decode_backends(torch.device("cpu"), torch.float32, 4):
        with pytest.raises(ValueError, match="attention_backend 'triton' is not usable"):
            Sampler(model, attention_backend="triton").generate([[1]], params)
        with pytest.raises(ValueError, match="paged_prefill needs Triton"):
            Sampler(model, paged_prefill=True).generate([[1]], params)
    with pytest.raises(ValueError, match="paged_prefill"):
        Sampler(model, paged_prefill=1)
    windowed = Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                           use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ValueError, match="sliding-window"):
        Sampler(Qwen2ForCausalLM(windowed))
    assert sampler.generate([], params) == []


# ------------------------------------------------------------------ the Triton path
triton_on_cpu = _backends.triton_usable_on(torch.device("cpu"))  # TRITON_INTERPRET=1


@pytest.mark.skipif(torch.cuda.is_available() or triton_on_cpu or not _backends.has_triton(),
                    reason="needs Triton without a GPU (there the CUDA tests run the Triton path)")
def test_triton_cases_under_the_interpreter(run_triton_cases_interpreted):
    run_triton_cases_interpreted(__file__)


@pytest.mark.skipif(not triton_on_cpu, reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("make_model, split_k", [(tiny_llama, True), (tiny_qwen3, False)],
                         ids=["llama-split-k-paged-prefill", "qwen3"])
def test_triton_path_matches_the_torch_path(make_model, split_k, monkeypatch):
    """The whole Triton path of the sampler (attention, fused norms, RoPE with the cache write, SwiGLU, the draws
    from the logits; prompts sharing cached blocks) on the CPU under the interpreter: greedy output equal to the
    torch path's and HF's, seeded draws equal to the torch path's, log-probs within float32 rounding.
    ``split_k``: attention split as on a GPU of 132 multiprocessors, in splits of at least 8 tokens, and the
    prefill by the paged prefill kernel."""
    if split_k:
        from effreason.kernels import paged_attention
        monkeypatch.setattr(paged_attention, "_num_sms", lambda device: 132)
        monkeypatch.setattr(paged_attention, "MIN_SPLIT_TOKENS", 8)
    model = make_model()
    prompts = random_prompts((1, 6, 17)) + _shared_prefix_prompts(9, (2, 5))  # the last two share 2 cached blocks
    samplers = {backend: Sampler(model, block_size=4, kv_cache_tokens=512, attention_backend=backend,
                                 paged_prefill=split_k and backend == "triton")
                for backend in ("triton", "torch")}
    for params in (SamplingParams(n=2, temperature=0, max_tokens=10),
                   SamplingParams(n=2, temperature=0.9, max_tokens=8, seed=5)):
        triton_results, torch_results = (sampler.generate(prompts, params) for sampler in samplers.values())
        for prompt, ours, reference in zip(prompts, triton_results, torch_results):
            assert [c.token_ids for c in ours] == [c.token_ids for c in reference]
            if params.greedy:
                assert ours[0].token_ids == hf_greedy(model, prompt, params.max_tokens)
            for completion, expected in zip(ours, reference):
                torch.testing.assert_close(torch.tensor(completion.trainer_logprobs),
                                           torch.tensor(expected.trainer_logprobs), atol=LOGPROB_TOLERANCE, rtol=0)
    assert samplers["triton"].runner.triton and not samplers["torch"].runner.triton
    assert samplers["triton"].last_stats["cached_prompt_tokens"] > 0  # prefill read K/V the Triton kernel wrote


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("attention_backend, variant", [("triton", None), ("triton", "split-k"),
                                                        ("triton", "paged-prefill"), ("torch", None)])
def test_cuda_greedy_matches_hf_generate(attention_backend, variant, cuda_graphs, monkeypatch):
    if variant == "split-k":  # splits of 32 tokens: split-K at these short contexts
        from effreason.kernels import paged_attention
        monkeypatch.setattr(paged_attention, "MIN_SPLIT_TOKENS", 32)
    if attention_backend not in attention.usable_decode_backends(torch.device("cuda"), torch.float32, 16):
        pytest.skip(f"{attention_backend} decode attention not usable here")
    model = tiny_qwen2().cuda()
    sampler = Sampler(model, block_size=16, kv_cache_tokens=2048, cuda_graphs=cuda_graphs,
                      attention_backend=attention_backend, paged_prefill=variant == "paged-prefill")
    prompts = random_prompts(LENGTHS)
    results = sampler.generate(prompts, SamplingParams(n=2, temperature=0, max_tokens=16))
    for prompt, completions in zip(prompts, results):
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            expected = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                                      min_new_tokens=16, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert [c.token_ids for c in completions] == [expected, expected]
    assert sampler.runner.backend == attention_backend
    assert (sampler.runner.graphs is not None) == (cuda_graphs and attention_backend != "torch")


# ------------------------------------------------------------------ prefix cache
def _shared_prefix_prompts(prefix_len: int, suffix_lens, seed: int = 3) -> list[list[int]]:
    prefix = random_prompts((prefix_len,), seed=seed)[0]
    return [prefix + suffix for suffix in random_prompts(suffix_lens, seed=seed + 1)]


def test_prompts_sharing_a_prefix_reuse_its_blocks_and_match_hf(model, backend):
    prompts = _shared_prefix_prompts(10, (1, 3, 6))  # block size 4: the 2 full prefix blocks are shared
    sampler = Sampler(model, block_size=4, kv_cache_tokens=1024)
    _check_greedy(model, sampler, prompts, n=2, new_tokens=12)
    assert sampler.last_stats["cached_prompt_tokens"] == 2 * 8  # prompts 2 and 3 reuse prompt 1's blocks


def test_prefix_cache_serves_later_calls_until_the_weights_change():
    model = tiny_qwen2()
    prompts = _shared_prefix_prompts(12, (2,))  # 14 tokens: 3 full blocks of 4, the last token computed
    sampler = Sampler(model, block_size=4, kv_cache_tokens=256)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=5)
    first = sampler.generate(prompts, params)
    assert sampler.last_stats["cached_prompt_tokens"] == 0
    second = sampler.generate(prompts, params)
    assert sampler.last_stats["cached_prompt_tokens"] == 12
    for a, b in zip(first[0], second[0]):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.trainer_logprobs), torch.tensor(b.trainer_logprobs),
                                   atol=1e-5, rtol=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor(prompts)).logits.sum().backward()
    optimizer.step()
    after = sampler.generate(prompts, SamplingParams(temperature=0, max_tokens=10))
    assert sampler.last_stats["cached_prompt_tokens"] == 0  # an optimizer step empties the prefix cache
    assert after[0][0].token_ids == hf_greedy(model, prompts[0], 10)


def test_inference_mode_weights_sample_like_hf_and_serve_later_calls():
    with torch.inference_mode():
        model = tiny_qwen2()
    prompts = _shared_prefix_prompts(8, (2, 3))
    sampler = Sampler(model, block_size=4, kv_cache_tokens=256)
    for cached in (8, 16):  # within the first call, then both prompts' two full prefix blocks
        _check_greedy(model, sampler, prompts, n=1, new_tokens=4)
        assert sampler.last_stats["cached_prompt_tokens"] == cached


def test_weights_changed_by_hand_loaded_or_replaced_empty_the_prefix_cache():
    """An in-place edit outside an optimizer is announced with ``weights_changed()``; ``load_state_dict`` and a
    replaced parameter are seen without a word. Each time the next call recomputes its prompts and matches HF."""
    model = tiny_qwen2()
    prompts = _shared_prefix_prompts(12, (2,))  # 3 full blocks of 4 cached after the first call
    sampler = Sampler(model, block_size=4, kv_cache_tokens=256)
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def generate_and_check(cached: int) -> None:
        _check_greedy(model, sampler, prompts, n=1, new_tokens=6)
        assert sampler.last_stats["cached_prompt_tokens"] == cached

    generate_and_check(0)
    generate_and_check(12)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    sampler.weights_changed()
    generate_and_check(0)
    model.load_state_dict(saved)
    generate_and_check(0)
    generate_and_check(12)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 2)
    generate_and_check(0)


def test_prefix_caching_off_and_a_prompt_of_whole_blocks():
    model = tiny_qwen2()
    prompt = random_prompts((8,), seed=4)[0]  # two full blocks: only the first may come from the cache
    cached = Sampler(model, block_size=4, kv_cache_tokens=256)
    for _ in range(2):
        _check_greedy(model, cached, [prompt], n=2, new_tokens=6)
    assert cached.last_stats["cached_prompt_tokens"] == 4
    uncached = Sampler(model, block_size=4, kv_cache_tokens=256, prefix_caching=False)
    for _ in range(2):
        _check_greedy(model, uncached, [prompt, prompt], n=1, new_tokens=6)
    assert uncached.last_stats["cached_prompt_tokens"] == 0
