"""Run the real crictl against a pycri socket; tests using it skip when crictl is not installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CRICTL = shutil.which("crictl")
needs_crictl = pytest.mark.skipif(CRICTL is None, reason="crictl is not installed (it comes from cri-tools)")


def crictl(endpoint: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert CRICTL is not None
    command = [CRICTL, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def crictl_ok(endpoint: str, *args: str, timeout: float = 120) -> str:
    done = crictl(endpoint, *args, timeout=timeout)
    assert done.returncode == 0, f"crictl {' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return done.stdout
