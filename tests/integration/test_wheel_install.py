"""pycri as a user installs it: a wheel in a clean venv, run from outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycri import __version__
from pycri.api import api_pb2
from tests.support.daemon import REPO, PycriProcess, remove_tree, short_tempdir

pytestmark = pytest.mark.integration

# What a source checkout holds that a build must not see: the build then reads only what git would ship.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


@dataclass
class InstalledPycri(PycriProcess):
    """A daemon run by a venv's `pycri` script, with a cwd that holds no pycri sources."""

    venv: Path = Path()

    def start(self, wait: bool = True) -> InstalledPycri:
        self.write_config()
        log = self.log_path.open("ab")
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "pycri"), "--config", str(self.config_path), "serve"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            env=env,
        )
        if wait:
            self.wait_ready()
        return self


def run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pycri installed from a wheel built off a copy of the sources."""
    work = tmp_path_factory.mktemp("wheel")
    sources = work / "src"
    shutil.copytree(REPO, sources, ignore=NOT_SOURCES)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", sources, cwd=work)
    (wheel,) = (work / "dist").glob("pycri-*.whl")
    shutil.rmtree(sources)
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    run(work / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=work)
    return work / "venv"


@pytest.fixture
def installed(venv: Path) -> Iterator[InstalledPycri]:
    base = short_tempdir()
    daemon = InstalledPycri(base, venv=venv)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        remove_tree(base)


def test_the_venv_imports_pycri_from_its_own_site_packages(venv: Path) -> None:
    location = run(venv / "bin" / "python", "-c", "import pycri; print(pycri.__file__)", cwd=venv)
    assert Path(location.strip()).is_relative_to(venv)


def test_installed_wheel_serves_and_installs_the_default_network(installed: InstalledPycri) -> None:
    version = installed.runtime().Version(api_pb2.VersionRequest())
    assert (version.runtime_name, version.runtime_version) == ("pycri", __version__)
    conditions = {c.type: c for c in installed.runtime().Status(api_pb2.StatusRequest()).status.conditions}
    assert conditions["RuntimeReady"].status
    assert conditions["NetworkReady"].status, conditions["NetworkReady"].message
    conflist = installed.base / "cni" / "10-pycri.conflist"
    assert conflist.read_text().count('"type": "bridge"') == 1
    assert installed.stop() == 0
