"""The benchmark suite's --quick run (bench/suite.py): it ends cleanly and its JSON has every figure for
pycri, and for the peer when containerd is installed (or says why there is none). No figure or
ratio is judged: these machines are too noisy for that."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import REPO
from tests.support.registry import registry_available

pytestmark = pytest.mark.integration

SUITE_SECONDS = 600
# Figures every run has, whatever the host has installed (crictl and critest may be missing).
ALWAYS = (
    "memory.daemon.idle.pss",
    "start.serial.pod.p50",
    "start.serial.create_and_start.p50",
    "remove.serial.StopPodSandbox.p50",
    "remove.serial.RemoveContainer.p50",
    "start.parallel4.wall",
    "start.parallel8.wall",
    "density.ListPodSandbox.p50",
    "density.ListContainers.p50",
    "density.ContainerStatus.p50",
    "density.PodSandboxStatus.p50",
    "density.relist.p50",
    "density.ListContainerStats.p50",
    "density.ListPodSandboxStats.p50",
    "memory.per_pod.pss",
    "remove.density.wall",
    "pull.cold",
    "pull.warm",
    "pull.concurrent",
)
# Why a figure may have no value in a quick run.
ALLOWED_SKIPS = ("not run in --quick mode", "crictl is not installed", "critest is not installed")


def containerd_installed() -> bool:
    return shutil.which("containerd") is not None and shutil.which("containerd-shim-runc-v2") is not None


def missing_side(figures: list[dict[str, Any]], side: str) -> list[str]:
    """Figures with neither a value for `side` nor an allowed reason for having none."""
    return [
        figure["key"]
        for figure in figures
        if side not in figure["values"] and figure["skipped"].get(side) not in ALLOWED_SKIPS
    ]


def test_quick_suite_reports_every_figure(tmp_path: Path) -> None:
    if not registry_available():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "bench/suite.py", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=SUITE_SECONDS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    figures = results["figures"]
    keys = {figure["key"] for figure in figures}
    assert not [key for key in ALWAYS if key not in keys]
    assert not missing_side(figures, "pycri")
    if containerd_installed():
        assert results["sides"]["peer"].startswith("containerd")
        assert not missing_side(figures, "peer")
        assert any(figure["ratio"] is not None for figure in figures)
    else:
        assert "containerd is not installed" in results["facts"]["peer"]
        assert all("peer" not in figure["values"] for figure in figures)
    assert results["series"]["ListContainers"]["pycri"]
    for name in ("table.md", "table.txt", "latency.png", "latency.svg"):
        assert (out / name).stat().st_size > 0
    assert "pycri/peer" in done.stdout
