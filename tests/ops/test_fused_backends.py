"""The fused LM-head ops against the float64 oracle ``effreason.ops.reference``, on every backend.

* ``torch`` runs here on the CPU.
* ``triton`` runs on a GPU, or on the CPU under ``TRITON_INTERPRET=1``: without a GPU,
  ``test_triton_backend_interpreted`` re-runs this file's triton cases in a subprocess with
  the variable set, so the interpreter never leaks into the rest of the suite.
* ``cuda`` runs where ``effreason._C`` was built with CUDA (``bench/gpu_check.sh``).

Tolerances (relative, norm-wise): float32 paths 1e-5 for log-probs, losses and both gradients;
bf16 paths at most 2x the error of plain bf16 torch (the reference run in bf16) against float64.
"""

from __future__ import annotations

import os

import pytest
import torch

from effreason._backends import triton_usable_on
from effreason.ops import fused_logprobs, fused_policy_loss, fused_ppo_loss, reference
from effreason.ops.fused import cuda_kernels_available

GPU = torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if GPU else "cpu")
FP32_RTOL = 1e-5


def _backend_device(backend: str) -> torch.device:
    if backend == "torch":
        return torch.device("cpu")
    usable = triton_usable_on(KERNEL_DEVICE) if backend == "triton" else GPU and cuda_kernels_available()
    if not usable:
        pytest.skip(f"backend {backend!r} unavailable here")
    return KERNEL_DEVICE


BACKENDS = ["torch", "triton", "cuda"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 on the CPU (absolute when expected is 0)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def make_lm_head(num_tokens: int, hidden_size: int, vocab_size: int, *, logit_scale: float = 3.0, seed: int = 0):
    """float64 hidden (N, H), weight (V, H) with logits of std ~``logit_scale``, and targets (N,)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=generator, dtype=torch.float64)
    weight = torch.randn(vocab_size, hidden_size, generator=generator, dtype=torch.float64) * logit_scale / hidden_size**0.5
    targets = torch.randint(0, vocab_size, (num_tokens,), generator=generator)
    return hidden, weight, targets


def leaf(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return tensor.detach().to(device, dtype).requires_grad_()


def logprob_outputs_and_grads(function, hidden, weight, targets, upstream, upstream_entropy, **kwargs):
    """Run ``function`` (ours or the reference) and backprop ``sum g logp + gH H``; return (logp, H, dH, dW)."""
    logprobs, entropy = function(hidden, weight, targets, **kwargs)
    objective = (logprobs * upstream.to(logprobs)).sum()
    if upstream_entropy is not None:
        objective = objective + (entropy * upstream_entropy.to(entropy)).sum()
    grad_hidden, grad_weight = torch.autograd.grad(objective, (hidden, weight))
    return logprobs, entropy, grad_hidden, grad_weight


def ours_with_entropy(backend):
    return lambda h, w, t, temperature: fused_logprobs(h, w, t, temperature, return_entropy=True, backend=backend)


# ----------------------------------------------------------------------------- fused_logprobs


LOGPROB_SHAPES = [(1, 8, 17), (37, 20, 301), (64, 48, 1000)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", LOGPROB_SHAPES, ids=lambda s: "N{}-H{}-V{}".format(*s))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_logprobs_float32(backend, shape, temperature, entropy_grad):
    device = _backend_device(backend)
    hidden, weight, targets = make_lm_head(*shape)
    upstream = torch.randn(shape[0], dtype=torch.float64)
    upstream_entropy = torch.randn(shape[0], dtype=torch.float64) if entropy_grad else None
    expected = logprob_outputs_and_grads(
        reference.token_logprobs_and_entropy, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"),
        targets, upstream, upstream_entropy, temperature=temperature,
    )
    actual = logprob_outputs_and_grads(
        ours_with_entropy(backend), leaf(hidden, torch.float32, device), leaf(weight, torch.float32, device),
        targets.to(device), upstream.to(device), None if upstream_entropy is None else upstream_entropy.to(device),
        temperature=temperature,
    )
    assert actual[0].dtype == torch.float32 and actual[0].shape == (shape[0],)
    for name, ours, oracle in zip(("logprobs", "entropy", "grad_hidden", "grad_weight"), actual, expected):
        assert relative_error(ours, oracle) < FP32_RTOL, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_without_entropy_match_with(backend):
    device = _backend_device(backend)
    hidden, weight, targets = make_lm_head(23, 16, 257)
    hidden, weight, targets = hidden.float().to(device), weight.float().to(device), targets.to(device)
    alone = fused_logprobs(hidden, weight, targets, backend=backend)
    paired, _ = fused_logprobs(hidden, weight, targets, return_entropy=True, backend=backend)
    torch.testing.assert_close(alone, paired)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab_size", [50257, 151936])
def test_logprobs_huge_vocab(backend, vocab_size):
    """V not a multiple of any tile; N and H kept small. A float32 sum over 1e5 vocabulary entries
    alone exceeds 1e-5 for grad_hidden, so the bound is max(1e-5, 2x the float32 reference's error)."""
    device = _backend_device(backend)
    hidden, weight, targets = make_lm_head(3, 8, vocab_size)
    targets[0] = vocab_size - 1
    upstream = torch.randn(3, dtype=torch.float64)
    runs = {}
    for name, function, dtype, run_device in (
        ("float64", reference.token_logprobs_and_entropy, torch.float64, "cpu"),
        ("float32", reference.token_logprobs_and_entropy, torch.float32, "cpu"),
        ("ours", ours_with_entropy(backend), torch.float32, device),
    ):
        extra = {"temperature": 1.0} if name == "ours" else {}
        runs[name] = logprob_outputs_and_grads(
            function, leaf(hidden, dtype, run_device), leaf(weight, dtype, run_device), targets.to(run_device),
            upstream.to(run_device), None, **extra,
        )
    for index, name in enumerate(("logprobs", "entropy", "grad_hidden", "grad_weight")):
        bound = max(FP32_RTOL, 2 * relative_error(runs["float32"][index], runs["float64"][index]))
        assert relative_error(runs["ours"][index], runs["float64"][index]) < bound, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_extreme_logits(backend):
    """Logits of +-1e4: no inf/NaN, log-probs and gradients still match."""
    device = _backend_device(backend)
    hidden, weight, targets = make_lm_head(11, 16, 97, logit_scale=1e4)
    upstream = torch.randn(11, dtype=torch.float64)
    expected = logprob_outputs_and_grads(
        reference.token_logprobs_and_entropy, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"),
        targets, upstream, None,
    )
    actual = logprob_outputs_and_grads(
        ours_with_entropy(backend), leaf(hidden, torch.float32, device), leaf(weight, torch.float32, device),
        targets.to(device), upstream.to(device), None, temperature=1.0,
    )
    assert all(bool(torch.isfinite(tensor).all()) for tensor in actual)
    for name, ours, oracle in zip(("logprobs", "grad_hidden", "grad_weight"), actual[:1] + actual[2:], expected[:1] + expected[2:]):
        assert relative_error(ours, oracle) < FP32_RTOL, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_bfloat16_within_twice_plain_bfloat16(backend):
    device = _backend_device(backend)
    hidden, weight, targets = make_lm_head(29, 40, 513)
    upstream = torch.randn(29, dtype=torch.float64)
    expected = logprob_outputs_and_grads(
        reference.token_logprobs_and_entropy, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"),
        targets, upstream, None,
    )
    plain = logprob_outputs_and_grads(
        _plain_logprobs_and_entropy, leaf(hidden, torch.bfloat16, "cpu"), leaf(weight, torch.bfloat16, "cpu"), targets, upstream, None
    )
    actual = logprob_outputs_and_grads(
        ours_with_entropy(backend), leaf(hidden, torch.bfloat16, device), leaf(weight, torch.bfloat16, device),
        targets.to(device), upstream.to(device), None, temperature=1.0,
    )
    for name, ours, bf16, oracle in zip(("logprobs", "entropy", "grad_hidden", "grad_weight"), actual, plain, expected):
        assert relative_error(ours, oracle) <= 2 * relative_error(bf16, oracle), name


def _plain_logprobs_and_entropy(hidden, weight, targets):
    """The reference computed entirely in the inputs' (low) precision: what plain bf16 torch gives."""
    log_probs = torch.log_softmax(hidden @ weight.T, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(1, targets.view(-1, 1)).squeeze(1), entropy


# ----------------------------------------------------------------------------- fused_ppo_loss


PPO_CASES = {
    "on-policy": dict(),
    "clip-token-mean": dict(old=True, loss_agg="token-mean"),
    "k3-in-loss-token-sum": dict(old=True, ref=True, kl_coef=0.05, loss_agg="seq-mean-token-sum"),
    "k1-in-reward-sum-norm": dict(old=True, ref=True, kl_coef=0.1, kl_estimator="k1", kl_in_reward=True,
                                  loss_agg="seq-mean-token-sum-norm", norm_length=64),
    "mask-temperature-k3": dict(old=True, ref=True, kl_coef=0.05, mask=True, temperature=0.7),
    "asymmetric-clip-mask-k1": dict(old=True, ref=True, kl_coef=0.2, kl_estimator="k1", clip_eps=(0.1, 0.3),
                                    mask=True, loss_agg="token-mean"),
}
PACKED_LENGTHS = [5, 1, 9, 7, 13, 2]  # six sequences, groups of 2, 37 tokens (prime)


def make_ppo_inputs(case: dict, *, vocab_size: int = 211, hidden_size: int = 20, seed: int = 1):
    """float64 LM head, packed boundaries, advantages and the case's loss options (with float64 log-probs)."""
    num_tokens = sum(PACKED_LENGTHS)
    hidden, weight, targets = make_lm_head(num_tokens, hidden_size, vocab_size, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    cu_seqlens = torch.tensor([0] + PACKED_LENGTHS).cumsum(0)
    advantages = torch.randn(len(PACKED_LENGTHS), generator=generator, dtype=torch.float64)
    temperature = case.get("temperature", 1.0)
    current = reference.token_logprobs(hidden, weight, targets, temperature)
    options = {key: case[key] for key in ("kl_coef", "kl_estimator", "kl_in_reward", "clip_eps", "loss_agg", "norm_length") if key in case}
    if case.get("old"):
        options["old_logprobs"] = current + 0.3 * torch.randn(num_tokens, generator=generator, dtype=torch.float64)
    if case.get("ref"):
        options["ref_logprobs"] = current + 0.5 * torch.randn(num_tokens, generator=generator, dtype=torch.float64)
    if case.get("mask"):
        options["token_mask"] = torch.rand(num_tokens, generator=generator) > 0.3
    options["temperature"] = temperature
    return hidden, weight, targets, cu_seqlens, advantages, options


def _to(options: dict, device, dtype) -> dict:
    return {key: value.to(device, dtype if value.is_floating_point() else value.dtype) if isinstance(value, torch.Tensor) else value
            for key, value in options.items()}


def loss_stats_grads(function, hidden, weight, *args, **kwargs):
    loss, stats = function(hidden, weight, *args, **kwargs)
    grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))
    return loss, stats, grad_hidden, grad_weight


def check_against_reference(actual, expected, stats_rtol=FP32_RTOL) -> None:
    loss, stats, grad_hidden, grad_weight = actual
    ref_loss, ref_stats, ref_grad_hidden, ref_grad_weight = expected
    assert abs(float(loss.detach()) - float(ref_loss.detach())) <= FP32_RTOL * max(abs(float(ref_loss.detach())), 1e-3)
    assert relative_error(grad_hidden, ref_grad_hidden) < FP32_RTOL
    assert relative_error(grad_weight, ref_grad_weight) < FP32_RTOL
    for name, value in ref_stats.items():
        assert abs(float(stats[name]) - float(value)) <= stats_rtol * max(abs(float(value)), 1.0), name
        assert stats[name].dim() == 0 and not stats[name].requires_grad, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(PPO_CASES), ids=str)
def test_ppo_loss_float32(backend, case):
    device = _backend_device(backend)
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES[case])
    expected = loss_stats_grads(
        reference.ppo_loss, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"), targets, cu_seqlens, advantages, **options
    )
    actual = loss_stats_grads(
        fused_ppo_loss, leaf(hidden, torch.float32, device), leaf(weight, torch.float32, device), targets.to(device),
        cu_seqlens.to(device), advantages.to(device, torch.float32), backend=backend, **_to(options, device, torch.float32),
    )
    check_against_reference(actual, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_loss_all_tokens_masked(backend):
    device = _backend_device(backend)
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES["clip-token-mean"])
    options["token_mask"] = torch.zeros(hidden.shape[0], dtype=torch.bool)
    hidden, weight = leaf(hidden, torch.float32, device), leaf(weight, torch.float32, device)
    loss, stats, grad_hidden, grad_weight = loss_stats_grads(
        fused_ppo_loss, hidden, weight, targets.to(device), cu_seqlens.to(device), advantages.to(device),
        backend=backend, **_to(options, device, torch.float32),
    )
    assert float(loss.detach()) == 0.0 and float(grad_hidden.abs().sum()) == 0.0 and float(grad_weight.abs().sum()) == 0.0
    assert all(bool(torch.isfinite(value)) for value in stats.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_loss_matches_reference(backend):
    device = _backend_device(backend)
    hidden, weight, targets, cu_seqlens, _, options = make_ppo_inputs(PPO_CASES["k3-in-loss-token-sum"])
    correct = torch.tensor([True, False, True, True, False, False])
    paper = dict(group_size=2, alpha=0.2)
    expected = loss_stats_grads(
        reference.policy_loss, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"), targets, cu_seqlens, correct,
        **paper, **options,
    )
    actual = loss_stats_grads(
        fused_policy_loss, leaf(hidden, torch.float32, device), leaf(weight, torch.float32, device), targets.to(device),
        cu_seqlens.to(device), correct.to(device), backend=backend, **paper, **_to(options, device, torch.float32),
    )
    check_against_reference(actual, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_loss_bfloat16_within_twice_plain_bfloat16(backend):
    device = _backend_device(backend)
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES["k3-in-loss-token-sum"], hidden_size=40)
    inputs = (targets, cu_seqlens, advantages)
    expected = loss_stats_grads(reference.ppo_loss, leaf(hidden, torch.float64, "cpu"), leaf(weight, torch.float64, "cpu"), *inputs, **options)
    plain = loss_stats_grads(_plain_ppo_loss, leaf(hidden, torch.bfloat16, "cpu"), leaf(weight, torch.bfloat16, "cpu"), *inputs, **options)
    actual = loss_stats_grads(
        fused_ppo_loss, leaf(hidden, torch.bfloat16, device), leaf(weight, torch.bfloat16, device),
        *(tensor.to(device) for tensor in inputs), backend=backend, **_to(options, device, torch.float32),
    )
    for index, name in ((0, "loss"), (2, "grad_hidden"), (3, "grad_weight")):
        assert relative_error(actual[index], expected[index]) <= 2 * relative_error(plain[index], expected[index]), name


def _plain_ppo_loss(hidden, weight, targets, cu_seqlens, advantages, *, temperature=1.0, **options):
    """``reference.ppo_loss`` with bf16 logits and log-softmax: the plain bf16 torch baseline."""
    from effreason import losses

    log_probs = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    return losses.policy_loss(log_probs.gather(1, targets.view(-1, 1)).squeeze(1), advantages, cu_seqlens, **options)


# ----------------------------------------------------------------------------- inputs, registration


def test_non_contiguous_inputs_are_copied():
    hidden, weight, targets = make_lm_head(13, 24, 101)
    expected = fused_logprobs(hidden.float(), weight.float(), targets, backend="torch")
    strided_hidden = hidden.float().T.contiguous().T  # column-major view
    strided_weight = torch.stack([weight.float(), torch.zeros_like(weight.float())], dim=-1)[..., 0]
    torch.testing.assert_close(fused_logprobs(strided_hidden, weight.float(), targets, backend="torch"), expected)
    assert not strided_hidden.is_contiguous() and not strided_weight.is_contiguous()
    torch.testing.assert_close(fused_logprobs(hidden.float(), strided_weight, targets, backend="torch"), expected)


@pytest.mark.parametrize(
    "change, argument",
    [
        (lambda h, w, t: (h, w, t.clone().fill_(101)), "targets"),
        (lambda h, w, t: (h, w, t - 1 - t.max()), "targets"),
        (lambda h, w, t: (h, w, t.float()), "targets"),
        (lambda h, w, t: (h, w, t[:-1]), "targets"),
        (lambda h, w, t: (h, w.double(), t), "weight"),
        (lambda h, w, t: (h, w[:, :-1], t), "weight"),
        (lambda h, w, t: (h, w.to("meta"), t), "weight"),
        (lambda h, w, t: (h[0], w, t), "hidden"),
        (lambda h, w, t: (h.int(), w.int(), t), "hidden"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(change, argument):
    hidden, weight, targets = make_lm_head(13, 24, 101)
    hidden, weight, targets = change(hidden.float(), weight.float(), targets)
    with pytest.raises(ValueError, match=argument):
        fused_logprobs(hidden, weight, targets, backend="torch")


@pytest.mark.parametrize("loss", [fused_policy_loss, reference.policy_loss])
@pytest.mark.parametrize(
    "cu_seqlens, correct, message",
    [
        ([0, 2, 4, 6, 8, 10, 13], [True, False, True, True, False], r"correct must have one entry per sequence \(S = len\(cu_seqlens\) - 1 = 6\), got 5"),
        ([2, 4, 6, 8, 10, 13], [True] * 6, r"cu_seqlens must start with 0 .*got cu_seqlens\[0\] = 2"),
        ([0, 2, 4, 6, 8, 10, 12], [True] * 6, r"cu_seqlens must end at the number of tokens \(13\)"),
        ([0, 2, 4, 6, 8, 10, 13], [1, 0, 1, 1, 0, 1], "correct must be a bool tensor"),
    ],
)
def test_policy_loss_errors_name_what_the_user_passed(loss, cu_seqlens, correct, message):
    hidden, weight, targets = make_lm_head(13, 24, 101)
    with pytest.raises(ValueError, match=message):
        loss(hidden.float(), weight.float(), targets, torch.tensor(cu_seqlens), torch.tensor(correct), group_size=2, alpha=0.2)


def test_triton_launcher_rejects_bad_rows():
    _backend_device("triton")
    from effreason.kernels import fused_logprobs as triton_rows

    logits = torch.randn(4, 10, device=KERNEL_DEVICE)
    targets = torch.zeros(4, dtype=torch.int64, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="logits"):
        triton_rows.row_stats(logits.T, targets)
    with pytest.raises(ValueError, match="targets"):
        triton_rows.row_stats(logits, targets.int())
    with pytest.raises(ValueError, match="coef"):
        triton_rows.row_grad_(logits, targets, torch.zeros(4, device=KERNEL_DEVICE), torch.zeros(3, device=KERNEL_DEVICE))


def test_frozen_weight_gets_no_gradient():
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES["clip-token-mean"])
    hidden = hidden.float().requires_grad_()
    options = _to(options, "cpu", torch.float32)
    loss, _ = fused_ppo_loss(hidden, weight.float(), targets, cu_seqlens, advantages.float(), backend="torch", **options)
    expected, _ = reference.ppo_loss(hidden, weight.float(), targets, cu_seqlens, advantages.float(), **options)
    torch.testing.assert_close(torch.autograd.grad(loss, hidden)[0], torch.autograd.grad(expected, hidden)[0])


def test_bad_options_raise_value_error():
    hidden, weight, targets, cu_seqlens, advantages, _ = make_ppo_inputs({})
    args = (hidden.float(), weight.float(), targets, cu_seqlens, advantages.float())
    for options, argument in [
        (dict(backend="magic"), "backend"),
        (dict(temperature=0.0), "temperature"),
        (dict(kl_coef=0.1), "ref_logprobs"),
        (dict(clip_eps=(1.5, 0.2)), "clip_eps"),
        (dict(loss_agg="sum"), "loss_agg"),
        (dict(old_logprobs=torch.zeros(3)), "old_logprobs"),
    ]:
        with pytest.raises(ValueError, match=argument):
            fused_ppo_loss(*args, **options)
    if not triton_usable_on(torch.device("cpu")):
        with pytest.raises(ValueError, match="triton"):
            fused_ppo_loss(*args, backend="triton")


def test_opcheck_custom_ops():
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES["mask-temperature-k3"])
    hidden, weight = hidden.requires_grad_(), weight.requires_grad_()
    torch.library.opcheck(torch.ops.effreason.fused_logprobs.default, (hidden, weight, targets, 0.7, True, "torch"))
    lse = reference.token_logprobs(hidden, weight, targets).detach()  # any (N,) float64 works for the schema checks
    torch.library.opcheck(
        torch.ops.effreason.fused_logprobs_backward.default,
        (torch.ones_like(lse), None, hidden.detach(), weight.detach(), targets, lse, lse[:0], 1.0, "torch", True, True),
    )
    num_tokens = hidden.shape[0]
    torch.library.opcheck(
        torch.ops.effreason.fused_ppo_loss.default,
        (hidden, weight, targets, torch.randn(num_tokens, dtype=torch.float64), torch.full((num_tokens,), 1 / num_tokens, dtype=torch.float64),
         options["old_logprobs"], options["ref_logprobs"], 0.05, "k3", True, 0.2, 0.2, 0.7, "torch", True, True),
    )


def test_torch_compile_graphs_through_the_ops():
    hidden, weight, targets, cu_seqlens, advantages, options = make_ppo_inputs(PPO_CASES["clip-token-mean"])
    hidden, weight = hidden.float().requires_grad_(), weight.float().requires_grad_()

    def logprobs_graph(hidden, weight):
        logprobs, _, _ = torch.ops.effreason.fused_logprobs(hidden, weight, targets, 1.0, False, "torch")
        return (logprobs * 2.0).sum()

    compiled = torch.compile(logprobs_graph, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(hidden, weight), logprobs_graph(hidden, weight))
    ppo = torch.compile(fused_ppo_loss, backend="aot_eager")
    options = _to(options, "cpu", torch.float32)
    loss, _ = ppo(hidden, weight, targets, cu_seqlens, advantages.float(), backend="torch", **options)
    eager, _ = fused_ppo_loss(hidden, weight, targets, cu_seqlens, advantages.float(), backend="torch", **options)
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(torch.autograd.grad(loss, weight)[0], torch.autograd.grad(eager, weight)[0])


@pytest.mark.skipif(GPU or os.environ.get("TRITON_INTERPRET") == "1", reason="triton cases run directly")
def test_triton_backend_interpreted(run_triton_cases_interpreted):
    """Run this file's triton cases in a subprocess under TRITON_INTERPRET=1 (CPU CI)."""
    pytest.importorskip("triton")
    run_triton_cases_interpreted(__file__)
