"""Native CPU decode ops (``effreason.sampler.cpu_decode``, float32 only) vs the torch code they replace.

* ``rms_norm`` vs ``w * x / sqrt(mean(x^2) + eps)`` in float64 and vs ``F.rms_norm`` in float32;
* ``rope_write_kv`` vs ``layers.rotate`` on the gathered cos/sin rows, then ``attention.write_kv``: q/k
  rotated in place (nothing else in their buffers touched), value cache bit for bit, other slots unchanged;
* ``gumbel_argmax`` vs the torch formula over ``sampling.uniform_noise``: the same tokens (the native logs
  agree to about 1 ulp), masked (-inf) tokens never drawn, reproducible;
* ``linear`` / ``add_linear_`` (the decode step's AVX-512 products) vs ``F.linear`` in float64 over every
  register-tile shape, bias and residual, strided rows; ATen's GEMM for a weight layout it does not take;
* ``PagedModel``'s decode forward on the native ops vs the same forward on torch ops, for Qwen2 (tied and
  untied), Llama (biases everywhere, 3 query heads per KV head, llama3 RoPE) and Qwen3 (q/k norms): final
  hidden states, logits and every layer's KV cache, at 1, 2 and 3 threads, 19 sequences of 1-33 tokens;
* bad input raises ValueError; every op passes ``torch.library.opcheck``.

Two regression tests pin fixed bugs: ``uniform_noise`` returned exactly 1.0 once in 2^24 draws (a masked
token was then drawn by torch, not natively), and the fake ``rms_norm`` kept a non-contiguous input's strides.

Tolerances (``TOLERANCE``, rtol / atol of the float32 results): 1e-6 / 1e-7 against the float64 formulas,
1e-6 / 1e-6 against torch's float32 RoPE (about 1 ulp apart: the rounding order differs), 1e-5 / 1e-5 for
the whole forward.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from test_sampler_gumbel_kernel import _torch_gumbel_argmax

from sampler_models import VOCAB, tiny_llama, tiny_qwen2, tiny_qwen3
from transformers import LlamaConfig, LlamaForCausalLM

from effreason.sampler import cpu_decode
from effreason.sampler.attention import AttentionMetadata, write_kv
from effreason.sampler.models import paged_model
from effreason.sampler.models.layers import rotate
from effreason.sampler.sampling import uniform_noise

pytestmark = pytest.mark.skipif(not cpu_decode._has_ops(),
                                reason="effreason._C not built, or built without the csrc/cpu_decode ops")

TOLERANCE = {
    "rms_norm": dict(rtol=1e-6, atol=1e-7),  # vs float64, and vs F.rms_norm in float32
    "rope": dict(rtol=1e-6, atol=1e-6),  # vs model._rotate in float32
    "forward": dict(rtol=1e-5, atol=1e-5),  # native vs torch ops: ~1 ulp per op over 2 layers
    "linear": dict(rtol=1e-5, atol=5e-5),  # vs float64: float32 sums of up to 700 products of N(0, 1) values
}
EPS = 1e-6


# ------------------------------------------------------------------ RMSNorm
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (128, 256), (5, 1000)])  # odd sizes: the 8-lane tails
def test_rms_norm_matches_float64_formula_and_torch(shape, contiguous):
    rows, size = shape
    generator = torch.Generator().manual_seed(rows * size)
    x = 3 * torch.randn(rows, size, generator=generator)
    x[1:2] = 0  # an all-zero row normalises to 0, not NaN
    if not contiguous:
        x = x.t().contiguous().t()
    weight = torch.randn(size, generator=generator)
    out = cpu_decode.rms_norm(x, weight, EPS)
    assert out.shape == x.shape and out.dtype == torch.float32
    x64 = x.double()
    expected = weight.double() * x64 / torch.sqrt(x64.square().mean(-1, keepdim=True) + EPS)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE["rms_norm"])
    torch.testing.assert_close(out, F.rms_norm(x, (size,), weight, EPS), **TOLERANCE["rms_norm"])


# ------------------------------------------------------------------ RoPE + KV-cache write
NUM_POSITIONS, BLOCK_SIZE = 50, 4

# (num_tokens, heads, kv_heads, head_dim, layout of q/k/v)
ROPE_CASES = [
    (1, 1, 1, 2, "linear"),
    (1, 8, 2, 64, "linear"),
    (5, 8, 2, 64, "fused_qkv"),
    (6, 4, 4, 16, "padded_heads"),
    (33, 8, 2, 64, "padded_heads"),
    (4, 6, 2, 2, "fused_qkv"),
]


def _qkv_buffers(case, generator):
    """The buffers holding q, k, v and a function viewing them as query (N, H, D), key, value (N, Hkv, D).

    ``linear``: one (N, heads * D) projection output each (contiguous views); ``fused_qkv``: slices of one
    (N, (H + 2 Hkv) D) output (row stride > heads * D); ``padded_heads``: every head's D of 2 D (head stride 2 D).
    """
    num_tokens, heads, kv_heads, dim, layout = case
    if layout == "fused_qkv":
        buffers = [torch.randn(num_tokens, (heads + 2 * kv_heads) * dim, generator=generator)]
        sizes = [heads * dim, kv_heads * dim, kv_heads * dim]
        return buffers, lambda b: tuple(part.view(num_tokens, -1, dim) for part in b[0].split(sizes, dim=1))
    width = 2 * dim if layout == "padded_heads" else dim
    buffers = [torch.randn(num_tokens, n * width, generator=generator) for n in (heads, kv_heads, kv_heads)]
    return buffers, lambda b: tuple(buffer.view(num_tokens, -1, width)[..., :dim] for buffer in b)


def _rope_tables(dim: int, tables: str, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (P, D): of real angles ``p * 10000^(-2i/D)`` (halves equal), or unrelated random numbers
    (halves differ: catches a mix-up of the first and second half's entries)."""
    if tables == "random":
        return tuple(torch.randn(NUM_POSITIONS, dim, generator=generator) for _ in range(2))
    inverse_frequency = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(NUM_POSITIONS, dtype=torch.float64)[:, None] * inverse_frequency
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _cache_slots(cache: torch.Tensor) -> torch.Tensor:
    """(num_blocks, Hkv, block_size, D) -> (num_blocks * block_size, Hkv, D), indexed by slot."""
    return cache.transpose(1, 2).reshape(-1, cache.shape[1], cache.shape[3])


@pytest.mark.parametrize("tables", ["angles", "random"])
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_write_kv_matches_rotate_and_write_kv(case, tables):
    num_tokens, heads, kv_heads, dim, _ = case
    generator = torch.Generator().manual_seed(num_tokens * heads * dim + (tables == "random"))
    buffers, views = _qkv_buffers(case, generator)
    cos_table, sin_table = _rope_tables(dim, tables, generator)
    positions = torch.randint(0, NUM_POSITIONS, (num_tokens,), generator=generator)
    num_blocks = -(-num_tokens // BLOCK_SIZE) + 2
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=generator)[:num_tokens]
    k_cache = torch.randn(num_blocks, kv_heads, BLOCK_SIZE, dim, generator=generator)
    v_cache = torch.randn(num_blocks, kv_heads, BLOCK_SIZE, dim, generator=generator)

    # the torch path, on copies
    expected = [buffer.clone() for buffer in buffers]
    query, key, value = views(expected)
    cos, sin = (table.index_select(0, positions)[:, None] for table in (cos_table, sin_table))  # (N, 1, D)
    rotated_query, rotated_key = rotate(query, cos, sin), rotate(key, cos, sin)
    query.copy_(rotated_query)
    key.copy_(rotated_key)
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    write_kv(expected_k_cache, expected_v_cache, key, value, slots)

    k_before, v_before = k_cache.clone(), v_cache.clone()
    cpu_decode.rope_write_kv(*views(buffers), cos_table, sin_table, positions, k_cache, v_cache, slots)
    for buffer, expected_buffer in zip(buffers, expected):  # rotated in place; padding and value untouched
        torch.testing.assert_close(buffer, expected_buffer, **TOLERANCE["rope"])
    torch.testing.assert_close(k_cache, expected_k_cache, **TOLERANCE["rope"])
    assert torch.equal(v_cache, expected_v_cache)
    untouched = torch.ones(num_blocks * BLOCK_SIZE, dtype=torch.bool)
    untouched[slots] = False
    for cache, before in [(k_cache, k_before), (v_cache, v_before)]:
        assert torch.equal(_cache_slots(cache)[untouched], _cache_slots(before)[untouched])


# ------------------------------------------------------------------ Gumbel-max sampling
def _truncated_log_probs(num_rows: int, vocab: int, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_probs (B, V) with about half the tokens masked to -inf, among them each row's likeliest token and
    its untruncated draw; row 1 keeps only the last token. Returns ``log_probs, keys, steps``."""
    log_probs = torch.log_softmax(3 * torch.randn(num_rows, vocab, generator=generator), dim=-1)
    keys = torch.randint(-2**62, 2**62, (num_rows,), generator=generator)
    steps = torch.randint(0, 1000, (num_rows,), generator=generator)
    if vocab == 1:
        return log_probs, keys, steps
    rows = torch.arange(num_rows)
    keep = torch.rand(num_rows, vocab, generator=generator) < 0.5
    drawn = _torch_gumbel_argmax(log_probs, keys, steps)
    keep[rows, drawn] = keep[rows, log_probs.argmax(-1)] = False
    keep[rows, (drawn + 1) % vocab] |= ~keep.any(-1)  # at least one token per row
    if num_rows > 1:
        keep[1] = False
        keep[1, -1] = True
    return log_probs.masked_fill(~keep, float("-inf")), keys, steps


@pytest.mark.parametrize("vocab", [1, 2, 511, 512, 513, 50000])  # 512: the native op's chunk
@pytest.mark.parametrize("num_rows", [1, 3, 64])
def test_gumbel_argmax_matches_torch_formula(num_rows, vocab):
    log_probs, keys, steps = _truncated_log_probs(num_rows, vocab, torch.Generator().manual_seed(num_rows + vocab))
    tokens = cpu_decode.gumbel_argmax(log_probs, keys, steps)
    assert tokens.dtype == torch.int64 and tokens.shape == (num_rows,)
    assert torch.equal(tokens, _torch_gumbel_argmax(log_probs, keys, steps))
    assert torch.isfinite(log_probs.gather(1, tokens[:, None])).all()  # masked tokens never drawn
    assert torch.equal(cpu_decode.gumbel_argmax(log_probs.clone(), keys.clone(), steps.clone()), tokens)


@pytest.mark.parametrize("vocab", [1, 2, 513, 50000])
@pytest.mark.parametrize("num_rows", [1, 3, 64])
def test_gumbel_sample_is_log_softmax_then_the_draw(num_rows, vocab):
    """Raw logits (some masked to -inf, rows 1000 apart): the torch formula's tokens on log_softmax, and
    their log-probs."""
    generator = torch.Generator().manual_seed(num_rows * vocab)
    wide = 3 * torch.randn(num_rows, vocab + 7, generator=generator) + 40  # far from 0: the shift matters
    logits = wide[:, :vocab]
    if vocab > 2:
        logits[:, ::3] = float("-inf")
    keys = torch.randint(-2**62, 2**62, (num_rows,), generator=generator)
    steps = torch.randint(0, 1000, (num_rows,), generator=generator)
    tokens, log_probs = cpu_decode.gumbel_sample(logits, keys, steps)
    reference = torch.log_softmax(logits, dim=-1)
    assert tokens.dtype == torch.int64 and log_probs.dtype == torch.float32 and tokens.shape == log_probs.shape
    assert torch.equal(tokens, _torch_gumbel_argmax(reference, keys, steps))
    # a few ulps of the shift (~45, ulp 4e-6): the sums over V run in another order than torch's
    torch.testing.assert_close(log_probs, reference.gather(1, tokens[:, None])[:, 0], atol=1e-5, rtol=0)


def test_gumbel_sample_rejects_bad_input():
    logits, keys, steps = torch.randn(3, 11), torch.tensor([1, 2, 3]), torch.tensor([0, 5, 9])
    for bad in [(logits.double(), keys, steps), (logits.t(), keys, steps), (logits[:, :0], keys, steps),
                (logits, keys[:2], steps), (logits, keys, steps.int())]:
        with pytest.raises(ValueError):
            cpu_decode.gumbel_sample(*bad)


def test_gumbel_argmax_strided_rows_and_nan_like_torch():
    generator = torch.Generator().manual_seed(7)
    wide = torch.log_softmax(torch.randn(4, 1100, generator=generator), dim=-1)
    log_probs = wide[:, :1029]  # row stride 1100
    log_probs[2, 700] = log_probs[2, 900] = float("nan")  # torch.argmax: the first NaN
    keys, steps = torch.arange(4) * 977, torch.full((4,), 3)
    tokens = cpu_decode.gumbel_argmax(log_probs, keys, steps)
    assert torch.equal(tokens, _torch_gumbel_argmax(log_probs, keys, steps))
    assert tokens[2] == 700


def test_gumbel_argmax_never_draws_a_masked_token():
    """With 24-bit uniforms, ``uniform_noise(key 0, step 537, V = 50000)[43736]`` was 1.0, so that token's
    Gumbel noise was +inf in torch (its score NaN when masked, which argmax picks) and about 88 in the native
    op: the token was drawn whatever its probability. 23-bit uniforms stay in [2^-24, 1 - 2^-24]."""
    keys, steps, masked = torch.tensor([0]), torch.tensor([537]), 43736
    log_probs = torch.log_softmax(torch.randn(1, 50_000, generator=torch.Generator().manual_seed(0)), dim=-1)
    log_probs[0, masked] = float("-inf")
    tokens = cpu_decode.gumbel_argmax(log_probs, keys, steps)
    assert torch.equal(tokens, _torch_gumbel_argmax(log_probs, keys, steps))  # were 43736 (torch) and another
    assert bool((uniform_noise(keys, steps, 50_000) < 1).all())


# ------------------------------------------------------------------ bad input, opcheck
def _rope_args(num_tokens=2, heads=4, kv_heads=2, dim=8, num_blocks=3):
    """Small valid ``rope_write_kv`` arguments, as a dict to override one at a time."""
    return dict(query=torch.randn(num_tokens, heads, dim), key=torch.randn(num_tokens, kv_heads, dim),
                value=torch.randn(num_tokens, kv_heads, dim), cos_table=torch.randn(5, dim),
                sin_table=torch.randn(5, dim), positions=torch.tensor([1, 4]),
                k_cache=torch.zeros(num_blocks, kv_heads, BLOCK_SIZE, dim),
                v_cache=torch.zeros(num_blocks, kv_heads, BLOCK_SIZE, dim), slot_mapping=torch.tensor([0, 7]))


# ------------------------------------------------------------------ linear (the decode step's products)
@pytest.mark.parametrize("rows, depth, cols", [(1, 1, 1), (5, 15, 3), (6, 16, 4), (7, 17, 5), (13, 37, 13),
                                               (64, 256, 64), (19, 688, 258)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_linear_matches_float64(rows, depth, cols, with_bias, with_residual, num_threads):
    """Every register-tile shape (row and column tails, K with and without a masked tail), bias, and a residual
    updated in place (``add_linear_``); x rows strided (a column slice of a wider tensor)."""
    generator = torch.Generator().manual_seed(rows * 1000 + depth)
    x = torch.randn(rows, depth + 3, generator=generator)[:, 1:depth + 1]
    weight = torch.randn(cols, depth, generator=generator)
    bias = torch.randn(cols, generator=generator) if with_bias else None
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    if with_residual:
        residual = torch.randn(rows, cols, generator=generator)
        expected += residual.double()
        got = cpu_decode.add_linear_(residual, x, weight, bias)
        assert got is residual
    else:
        got = cpu_decode.linear(x, weight, bias)
    assert got.shape == (rows, cols) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, **TOLERANCE["linear"])


def test_linear_takes_a_weight_in_any_layout():
    """A transposed (non-contiguous) weight goes to ATen's GEMM: the same result."""
    x, weight, bias = torch.randn(9, 24), torch.randn(24, 10).t(), torch.randn(10)
    torch.testing.assert_close(cpu_decode.linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cpu_decode.add_linear_(torch.ones(9, 10), x, weight, bias),
                               F.linear(x, weight, bias) + 1, rtol=1e-6, atol=1e-6)


def test_linear_rejects_bad_input():
    x, weight = torch.randn(3, 8), torch.randn(5, 8)
    for bad in [(x.double(), weight), (x, weight[:, :7]), (x[0], weight), (x, weight, torch.randn(4))]:
        with pytest.raises(ValueError):
            cpu_decode.linear(*bad)
    for residual in [torch.randn(3, 4), torch.randn(3, 5).double(), torch.randn(5, 3).t()]:
        with pytest.raises(ValueError):
            cpu_decode.add_linear_(residual, x, weight)


# ------------------------------------------------------------------ whole decode forward
DECODE_BLOCK_SIZE = 4
CONTEXT_LENS = [1, 5, 9, 4, 16, 13, 2, 33, 8, 7, 3, 17, 12, 6, 1, 20, 11, 4, 9]  # 19: three uneven thread ranges


def _llama_with_mlp_bias() -> LlamaForCausalLM:
    """Llama with every projection biased (attention and MLP), GQA 4:1, untied."""
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                         attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
    return model


DECODE_MODELS = {"qwen2": tiny_qwen2, "qwen2_tied": lambda: tiny_qwen2(tied=True), "llama": tiny_llama,
                 "llama_mlp_bias": _llama_with_mlp_bias, "qwen3": tiny_qwen3}


def _decode_step(model, context_lens, seed: int = 0):
    """PagedModel of ``model`` (weights bound), a KV cache of random past keys and values, and one decode step's
    inputs: (paged, input_ids, positions, kv_cache, meta); sequence s is at position ``context_lens[s] - 1``."""
    generator = torch.Generator().manual_seed(seed)
    paged = paged_model(model)
    paged.bind_weights()
    blocks = [-(-length // DECODE_BLOCK_SIZE) for length in context_lens]
    num_blocks = sum(blocks) + 3
    order = torch.randperm(num_blocks, generator=generator).to(torch.int32)  # scattered, distinct blocks
    tables = torch.zeros(len(context_lens), max(blocks), dtype=torch.int32)
    first = 0
    for row, count in enumerate(blocks):
        tables[row, :count] = order[first:first + count]
        first += count
    positions = torch.tensor(context_lens) - 1
    slots = tables.long().gather(1, (positions // DECODE_BLOCK_SIZE)[:, None])[:, 0] * DECODE_BLOCK_SIZE \
        + positions % DECODE_BLOCK_SIZE
    meta = AttentionMetadata(is_prefill=False, slot_mapping=slots, block_tables=tables,
                             context_lens=torch.tensor(context_lens, dtype=torch.int32))
    cache = torch.randn(paged.num_layers, 2, num_blocks, paged.num_kv_heads, DECODE_BLOCK_SIZE, paged.head_dim,
                        generator=generator)
    paged.rope_tables(max(context_lens))
    input_ids = torch.randint(0, VOCAB, (len(context_lens),), generator=generator)
    return paged, input_ids, positions, cache, meta


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def num_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("model_name", DECODE_MODELS)
def test_native_decode_forward_matches_the_torch_ops(model_name, num_threads, monkeypatch):
    """One decode step on the native ops (products, norms, SwiGLU, RoPE + cache write, attention) against the
    same forward on torch ops: hidden states, logits and every layer's KV cache."""
    paged, input_ids, positions, cache, meta = _decode_step(DECODE_MODELS[model_name](), CONTEXT_LENS)
    reference_cache = cache.clone()
    calls = []
    add_linear_ = cpu_decode.add_linear_
    monkeypatch.setattr(cpu_decode, "add_linear_", lambda *args: calls.append(1) or add_linear_(*args))
    with torch.no_grad():
        hidden = paged.forward(input_ids, positions, cache, meta, "native")
        logits = paged.logits(hidden)
        monkeypatch.setattr(cpu_decode, "usable", lambda tensor: False)  # torch ops, the native attention kept
        reference_hidden = paged.forward(input_ids, positions, reference_cache, meta, "native")
        reference_logits = paged.logits(reference_hidden)
    assert len(calls) == 2 * paged.num_layers  # o_proj and down_proj of every layer
    torch.testing.assert_close(hidden, reference_hidden, **TOLERANCE["forward"])
    torch.testing.assert_close(logits, reference_logits, **TOLERANCE["forward"])
    torch.testing.assert_close(cache, reference_cache, **TOLERANCE["forward"])


def test_native_forward_sees_weights_changed_in_place():
    """No copy of the weights: an in-place update shows in the next forward."""
    model = tiny_qwen2()
    paged, input_ids, positions, cache, meta = _decode_step(model, CONTEXT_LENS)
    with torch.no_grad():
        before = paged.forward(input_ids, positions, cache.clone(), meta, "native")
        model.model.layers[1].mlp.down_proj.weight.mul_(2.0)
        after = paged.forward(input_ids, positions, cache.clone(), meta, "native")
    assert not torch.allclose(before, after)


def test_native_products_only_for_cached_weights_or_enough_rows_per_thread(monkeypatch):
    """Weights beyond the cache threshold: the native products need MIN_ROWS_PER_THREAD rows a thread."""
    rows = len(CONTEXT_LENS)
    assert cpu_decode.products_pay(cpu_decode.CACHED_WEIGHT_BYTES, 1)
    monkeypatch.setattr(cpu_decode, "MIN_ROWS_PER_THREAD", rows)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_decode.products_pay(cpu_decode.CACHED_WEIGHT_BYTES + 1, rows)
        torch.set_num_threads(2)
        assert not cpu_decode.products_pay(cpu_decode.CACHED_WEIGHT_BYTES + 1, rows)
    finally:
        torch.set_num_threads(before)


def _gumbel_args():
    return torch.randn(3, 11).log_softmax(-1), torch.tensor([1, 2, 3]), torch.tensor([0, 5, 9])


def test_rms_norm_rejects_bad_input():
    x, weight = torch.randn(3, 8), torch.randn(8)
    for bad_x, bad_weight in [(x.double(), weight), (x, weight.double()), (x, weight[:7]), (x[None], weight),
                              (x.to(torch.bfloat16), weight)]:
        with pytest.raises(ValueError):
            cpu_decode.rms_norm(bad_x, bad_weight, EPS)


@pytest.mark.parametrize("name, bad", [
    ("query", torch.randn(2, 4, 8, dtype=torch.float64)),
    ("k_cache", torch.zeros(3, 2, BLOCK_SIZE, 8, dtype=torch.float64)),
    ("query", torch.randn(2, 4, 6)),  # head dims differ
    ("query", torch.randn(2, 32)),
    ("value", torch.randn(2, 1, 8)),
    ("key", torch.randn(2, 2, 16)[..., ::2]),  # non-contiguous last dim
    ("k_cache", torch.zeros(3, 1, BLOCK_SIZE, 8)),  # Hkv differs from key's
    ("cos_table", torch.randn(5, 6)),
    ("positions", torch.tensor([1, 4], dtype=torch.int32)),
    ("positions", torch.tensor([1, 5])),  # beyond the 5 table rows
    ("positions", torch.tensor([-1, 4])),
    ("positions", torch.tensor([1])),
    ("slot_mapping", torch.tensor([0, 12])),  # beyond 3 blocks of 4
    ("slot_mapping", torch.tensor([-1, 7])),
    ("slot_mapping", torch.tensor([0, 7], dtype=torch.int32)),
])
def test_rope_write_kv_rejects_bad_input(name, bad):
    with pytest.raises(ValueError):
        cpu_decode.rope_write_kv(**(_rope_args() | {name: bad}))


def test_rope_write_kv_rejects_an_odd_head_dim():
    with pytest.raises(ValueError):
        cpu_decode.rope_write_kv(**_rope_args(dim=7))


def test_gumbel_argmax_rejects_bad_input():
    log_probs, keys, steps = _gumbel_args()
    for bad in [(log_probs.double(), keys, steps), (log_probs, keys[:2], steps), (log_probs, keys, steps[:, None]),
                (log_probs, keys, steps.int()), (log_probs.t(), keys, steps), (log_probs[0], keys, steps)]:
        with pytest.raises(ValueError):
            cpu_decode.gumbel_argmax(*bad)


@pytest.mark.parametrize("op, make_args", [
    ("rms_norm", lambda: (torch.randn(3, 7), torch.randn(7), EPS)),
    ("rope_write_kv", lambda: tuple(_rope_args().values())),
    ("gumbel_argmax", _gumbel_args),
    ("linear", lambda: (torch.randn(7, 20), torch.randn(5, 20), torch.randn(5))),
    ("add_linear_", lambda: (torch.randn(7, 5), torch.randn(7, 20), torch.randn(5, 20), torch.randn(5))),
])
def test_opcheck(op, make_args):
    torch.library.opcheck(getattr(torch.ops.effreason, op).default, make_args())


def test_opcheck_rms_norm_of_a_transposed_input():
    """The op returns a contiguous tensor whatever x's strides; so must its fake."""
    torch.library.opcheck(torch.ops.effreason.rms_norm.default, (torch.randn(7, 3).t(), torch.randn(7), EPS),
                          test_utils=("test_faketensor",))
