"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_triton_cases_interpreted():
    """Run the ``-k triton`` cases of a test file in a subprocess under ``TRITON_INTERPRET=1``.

    Without a GPU this is how CI runs Triton kernels: the interpreter has to be switched on
    before Triton is imported, so it gets a process of its own and the rest of the suite is
    unaffected. Fails with the subprocess's output when any case fails or none ran.
    """

    def run(test_file: str, timeout_s: int = 600) -> None:
        environment = dict(os.environ, TRITON_INTERPRET="1")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", "triton"]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout_s)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert " passed" in result.stdout, result.stdout[-2000:]

    return run
