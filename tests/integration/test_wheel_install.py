"""pycri as a user installs it: `python -m build` makes an sdist and a wheel (the wheel built from the
sdist), the wheel goes into a fresh venv (not editable), and its `pycri` runs from a directory that
holds no pycri sources: it serves on its defaults and runs a pod with a container, through crictl
when crictl is on PATH, else through the gRPC API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from pycri import __version__
from pycri.api import api_pb2
from pycri.config import load_config
from tests.integration.test_crictl_lifecycle import container_file, pod_file
from tests.integration.test_sandbox_support import Node, running_node
from tests.support.busybox_images import TestImages
from tests.support.crictl import CRICTL, crictl, crictl_ok
from tests.support.daemon import REPO, PycriProcess, remove_tree, short_tempdir
from tests.support.pods import RUNNING, container_config, remove_pod_cgroup, shell, wait_until, workloads_on

pytestmark = pytest.mark.integration

# What a source checkout holds that a build must not see: the build then reads only what git would ship.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
# Files pycri reads at run time, as package data.
PACKAGE_DATA = ("10-pycri.conflist", "apparmor-default.profile", "pycri.service")


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
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Build:
    sdist: Path
    wheel: Path
    venv: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """`python -m build` on a copy of the sources, then the wheel installed into a fresh venv."""
    work = tmp_path_factory.mktemp("wheel")
    sources = work / "src"
    shutil.copytree(REPO, sources, ignore=NOT_SOURCES)
    run(sys.executable, "-m", "build", "--outdir", work / "dist", sources, cwd=work)
    (sdist,) = (work / "dist").glob("pycri-*.tar.gz")
    (wheel,) = (work / "dist").glob("pycri-*.whl")
    shutil.rmtree(sources)
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    run(work / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=work)
    return Build(sdist, wheel, work / "venv")


@pytest.fixture
def installed(build: Build) -> Iterator[InstalledPycri]:
    base = short_tempdir()
    daemon = InstalledPycri(base, venv=build.venv)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        remove_tree(base)


def test_the_sdist_holds_the_package_data(build: Build) -> None:
    with tarfile.open(build.sdist) as sdist:
        names = {Path(name).name for name in sdist.getnames() if "/pycri/data/" in name}
    assert set(PACKAGE_DATA) <= names


def test_the_venv_reads_pycri_and_its_data_from_its_own_site_packages(build: Build) -> None:
    script = (
        "import json, pycri\n"
        "from importlib import resources\n"
        "from pycri.network.cni_config import shipped_default_conflist\n"
        "from pycri.oci.apparmor import default_profile_text\n"
        "from pycri.service_unit import shipped_unit\n"
        "data = resources.files('pycri').joinpath('data')\n"
        "print(json.dumps({'module': pycri.__file__, 'data': str(data),\n"
        "  'conflist': shipped_default_conflist(), 'profile': default_profile_text(), 'unit': shipped_unit()}))\n"
    )
    found = json.loads(run(build.venv / "bin" / "python", "-c", script, cwd=build.venv))
    assert Path(found["module"]).is_relative_to(build.venv)
    assert Path(found["data"]).is_relative_to(build.venv)
    for name, key in zip(PACKAGE_DATA, ("conflist", "profile", "unit"), strict=True):
        assert found[key] == (REPO / "pycri" / "data" / name).read_text()


def test_the_installed_command_prints_a_config_that_loads_back(build: Build, tmp_path: Path) -> None:
    printed = tmp_path / "printed.toml"
    printed.write_text(run(build.venv / "bin" / "pycri", "config", cwd=tmp_path))
    assert load_config(printed) == load_config(None)  # the defaults, or /etc/pycri/pycri.toml's config


def test_installed_wheel_serves_and_installs_the_default_network(installed: InstalledPycri) -> None:
    version = installed.runtime().Version(api_pb2.VersionRequest())
    assert (version.runtime_name, version.runtime_version) == ("pycri", __version__)
    conditions = {c.type: c for c in installed.runtime().Status(api_pb2.StatusRequest()).status.conditions}
    assert conditions["RuntimeReady"].status
    assert conditions["NetworkReady"].status, conditions["NetworkReady"].message
    conflist = installed.base / "cni" / "10-pycri.conflist"
    assert conflist.read_text().count('"type": "bridge"') == 1
    assert installed.stop() == 0


@pytest.fixture
def installed_node(build: Build) -> Iterator[Node]:
    """The installed pycri on a private pod network (a bridge and subnet of its own)."""

    def make(base: Path, settings: dict[str, Any]) -> InstalledPycri:
        return InstalledPycri(base, settings, venv=build.venv)

    with running_node({}, make) as node:
        yield node


def run_with_crictl(node: Node, image: str, tmp_path: Path) -> str:
    """crictl pulls, runs the pod, creates and starts the container; returns the pod's IP."""
    endpoint = node.daemon.endpoint
    crictl_ok(endpoint, "pull", image)
    pod = pod_file(tmp_path, "wheel-pod")
    sandbox_id = crictl_ok(endpoint, "runp", pod).strip()
    try:
        container_id = crictl_ok(endpoint, "create", sandbox_id, container_file(tmp_path, image), pod).strip()
        crictl_ok(endpoint, "start", container_id)
        wait_until(lambda: "hello from crictl" in crictl_ok(endpoint, "logs", container_id), "the container's output")
        assert json.loads(crictl_ok(endpoint, "inspect", container_id))["status"]["state"] == "CONTAINER_RUNNING"
        return str(json.loads(crictl_ok(endpoint, "inspectp", sandbox_id))["status"]["network"]["ip"])
    finally:
        crictl(endpoint, "rmp", "-f", sandbox_id)
        remove_pod_cgroup(sandbox_id)


def run_with_grpc(node: Node, image: str) -> str:
    """The same through the gRPC API, for hosts without crictl."""
    with workloads_on(node) as work:
        work.pull(image)
        pod = work.pod("wheel-pod")
        talker = container_config("talker", image, *shell("echo hello from the wheel; exec sleep 3600"))
        talker.log_path = "talker.log"
        container_id = work.run(pod, talker)
        work.wait_for_state(container_id, RUNNING)
        log = pod.log_directory / "talker.log"
        wait_until(lambda: log.exists() and "hello from the wheel" in log.read_text(), "the container's output")
        return work.pod_status(pod.id).network.ip


def test_installed_wheel_runs_a_pod_with_a_container(
    installed_node: Node, test_images: TestImages, tmp_path: Path
) -> None:
    image = test_images.busybox.reference
    pod_ip = run_with_crictl(installed_node, image, tmp_path) if CRICTL else run_with_grpc(installed_node, image)
    assert ip_address(pod_ip) in ip_network(installed_node.network.subnet)
