"""The native segment kernel (reward + RLOO) equals the torch reference."""

import subprocess
import sys

import pytest
import torch

from effreason import backends
from effreason.ops import segment

needs_native = pytest.mark.skipif(not backends()["native"], reason="effreason._C not built")


@needs_native
@pytest.mark.parametrize("group_size", [2, 3, 8])
@pytest.mark.parametrize("lengths_dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
def test_native_equals_torch(group_size, lengths_dtype):
    generator = torch.Generator().manual_seed(group_size)
    num_samples = group_size * 37
    correct = torch.rand(num_samples, generator=generator) < 0.6
    lengths = torch.randint(0, 3000, (num_samples,), generator=generator).to(lengths_dtype)
    lengths[:group_size] = 17  # a group of equal lengths
    correct[group_size : 2 * group_size] = False  # an all-incorrect group
    for alpha in (0.0, 0.2, 1.0):
        native = segment.length_penalized_rloo(correct, lengths, group_size, alpha, backend="native")
        reference = segment.length_penalized_rloo_torch(correct, lengths, group_size, alpha)
        for got, expected in zip(native, reference):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-7)


@needs_native
def test_native_rejects_bad_input_before_the_kernel():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        segment.length_penalized_rloo(torch.ones(4, dtype=torch.bool), torch.ones(4), 1, 0.2, backend="native")
    with pytest.raises(ValueError, match="alpha"):
        segment.length_penalized_rloo(torch.ones(4, dtype=torch.bool), torch.ones(4), 2, 2.0, backend="native")


@needs_native
def test_native_op_passes_opcheck_and_compiles():
    correct = torch.tensor([True, False, True, True, True, False])
    lengths = torch.tensor([5, 2, 9, 4, 4, 1])
    torch.library.opcheck(torch.ops.effreason.length_penalized_rloo.default, (correct, lengths, 3, 0.2))
    compiled = torch.compile(lambda c, n: torch.ops.effreason.length_penalized_rloo(c, n, 3, 0.2), fullgraph=True)
    for got, expected in zip(compiled(correct, lengths), segment.length_penalized_rloo_torch(correct, lengths, 3, 0.2)):
        torch.testing.assert_close(got, expected)


def test_import_and_fallback_without_native():
    code = (
        "import torch, effreason\n"
        "from effreason.ops import length_penalized_rloo\n"
        "assert effreason.backends()['native'] is False\n"
        "r, a = length_penalized_rloo(torch.tensor([True, False]), torch.tensor([3, 4]), 2, 0.2)\n"
        "print(r.tolist(), a.tolist())\n"
    )
    env = {**__import__("os").environ, "EFFREASON_DISABLE_NATIVE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0.8999999761581421, 0.0] [0.8999999761581421, -0.8999999761581421]"
