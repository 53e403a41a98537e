"""The clone root shadows nothing: Python puts the working directory first on ``sys.path``, so a
top-level folder that is a regular package would win over an installed package of the same name
(our Triton ``kernels/`` over Hugging Face's ``kernels``, which transformers imports when a model
loads). Each case runs a fresh interpreter from the repository root, as a new user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_from_repo_root(*arguments: str, timeout_s: int = 300) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, *arguments], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=timeout_s)


def test_hub_kernels_package_wins_over_our_kernels_folder():
    script = (
        "import kernels, transformers.integrations.hub_kernels\n"
        "from transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained('effreason/assets/warmstart')\n"
        "print(kernels.__file__)\n"
    )
    result = _run_from_repo_root("-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels_file = Path(result.stdout.strip().splitlines()[-1]).resolve()
    assert REPO not in kernels_file.parents, f"'import kernels' found the repository's folder: {kernels_file}"


def test_our_kernels_stay_importable_as_effreason_kernels():
    result = _run_from_repo_root("-c", "import effreason.kernels.fused_logprobs as rows; print(rows.__file__)")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip()).resolve() == REPO / "kernels" / "fused_logprobs.py"


def test_entry_points_start_from_the_repo_root():
    for module in ("effreason.train", "effreason.eval", "effreason.sweep"):
        result = _run_from_repo_root("-m", module, "--help", timeout_s=120)
        assert result.returncode == 0, f"{module}: {result.stderr[-3000:]}"
