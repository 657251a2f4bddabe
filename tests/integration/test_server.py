"""The daemon as kubelet and crictl meet it: socket, Version, Status, config, shutdown."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from pycri import __version__
from pycri.api import api_pb2
from tests.support.daemon import REPO, PycriProcess

pytestmark = pytest.mark.integration


def conditions(daemon: PycriProcess) -> dict[str, api_pb2.RuntimeCondition]:
    reply = daemon.runtime().Status(api_pb2.StatusRequest(verbose=True))
    return {c.type: c for c in reply.status.conditions}


def test_version(pycri: PycriProcess) -> None:
    reply = pycri.runtime().Version(api_pb2.VersionRequest())
    assert reply.runtime_name == "pycri"
    assert reply.runtime_version == __version__
    assert reply.runtime_api_version == "v1"


def test_socket_mode_and_parent_dirs(pycri: PycriProcess) -> None:
    assert pycri.socket.is_socket()
    assert pycri.socket.stat().st_mode & 0o777 == 0o660


def test_unimplemented_rpc_is_not_a_fake_success(pycri: PycriProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pycri.runtime().CheckpointPod(api_pb2.CheckpointPodRequest(pod_sandbox_id="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointPod" in err.value.details()


def test_runtime_config_reports_cgroup_driver(pycri: PycriProcess) -> None:
    reply = pycri.runtime().RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert reply.linux.cgroup_driver == api_pb2.CgroupDriver.CGROUPFS


def test_status_verbose_info(pycri: PycriProcess) -> None:
    reply = pycri.runtime().Status(api_pb2.StatusRequest(verbose=True))
    config = json.loads(reply.info["config"])
    assert config["socket"] == str(pycri.socket)
    host = json.loads(reply.info["hostInfo"])
    assert host["pycri"] == __version__
    assert host["runtimes"]["runc"]["version"].startswith("runc version")
    assert "conmon version" in host["conmon"]["version"]
    handlers = {h.name: h.features for h in reply.runtime_handlers}
    assert set(handlers) == {"", "runc"}
    assert handlers["runc"].recursive_read_only_mounts  # runc 1.1 lists "rro" on this kernel
    assert reply.features.supplemental_groups_policy
    assert reply.features.mount_options


def test_runtime_not_ready_names_missing_runc(pycri_dir: Path) -> None:
    daemon = PycriProcess(pycri_dir, {"runtime": {"handlers": {"runc": {"path": "/nonexistent/runc"}}}}).start()
    try:
        ready = conditions(daemon)["RuntimeReady"]
        assert not ready.status
        assert ready.reason == "RuntimeBinaryMissing"
        assert "/nonexistent/runc" in ready.message
    finally:
        daemon.stop()


def test_update_runtime_config_keeps_pod_cidr(pycri: PycriProcess) -> None:
    config = api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr="10.99.0.0/24"))
    pycri.runtime().UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(runtime_config=config))
    reply = pycri.runtime().Status(api_pb2.StatusRequest(verbose=True))
    assert json.loads(reply.info["podCIDR"]) == "10.99.0.0/24"


def test_second_server_on_same_socket_fails_and_first_keeps_serving(pycri: PycriProcess, tmp_path: Path) -> None:
    second = PycriProcess(tmp_path, {"socket": str(pycri.socket)})
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert f"already serving on {pycri.socket}" in second.log_path.read_text()
    assert pycri.runtime().Version(api_pb2.VersionRequest()).runtime_name == "pycri"


def test_second_server_on_same_root_fails(pycri: PycriProcess, tmp_path: Path) -> None:
    second = PycriProcess(tmp_path, {"root_dir": str(pycri.base / "root")})
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert "another pycri" in second.log_path.read_text()
    assert pycri.runtime().Version(api_pb2.VersionRequest()).runtime_name == "pycri"


def test_stale_socket_is_replaced(pycri_dir: Path) -> None:
    daemon = PycriProcess(pycri_dir)
    daemon.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))
    stale.close()  # the file stays, nobody listens
    daemon.start()
    try:
        assert daemon.runtime().Version(api_pb2.VersionRequest()).runtime_name == "pycri"
    finally:
        daemon.stop()


def test_regular_file_at_socket_path_is_left_alone(pycri_dir: Path) -> None:
    daemon = PycriProcess(pycri_dir)
    daemon.socket.parent.mkdir(parents=True)
    daemon.socket.write_text("user data")
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(30) == 1
    assert daemon.socket.read_text() == "user data"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(pycri_dir: Path, sig: int) -> None:
    daemon = PycriProcess(pycri_dir).start()
    assert daemon.stop(sig) == 0
    assert not daemon.socket.exists()
    assert "shutting down" in daemon.log_path.read_text()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycri", *args], capture_output=True, text=True, cwd=REPO)


def test_bad_config_key_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "pycri.toml"
    config.write_text('socket = "/tmp/x.sock"\n[runtime]\ncgroup_drver = "systemd"\n')
    done = run_cli("--config", str(config), "serve")
    assert done.returncode == 2
    assert "runtime.cgroup_drver" in done.stderr


def test_bad_config_value_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "pycri.toml"
    config.write_text('[runtime]\ncgroup_driver = "upstart"\n')
    done = run_cli("--config", str(config), "config")
    assert done.returncode == 2
    assert "runtime.cgroup_driver" in done.stderr and "upstart" in done.stderr


def test_config_command_prints_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "pycri.toml"
    config.write_text('log_level = "warning"\n[images.mirrors]\n"registry.k8s.io" = ["http://localhost:5000"]\n')
    done = run_cli("--config", str(config), "config")
    assert done.returncode == 0, done.stderr
    assert 'log_level = "warning"' in done.stdout
    assert '"registry.k8s.io" = ["http://localhost:5000"]' in done.stdout


def test_info_command_lists_versions() -> None:
    done = run_cli("info")
    info = json.loads(done.stdout)
    assert info["runtimes"]["runc"]["version"].startswith("runc version")
    assert "bridge" in info["cni_plugins"]


def test_network_ready_with_default_config_installed(pycri: PycriProcess) -> None:
    assert (pycri.base / "cni" / "10-pycri.conflist").exists()
    ready = conditions(pycri)
    assert ready["RuntimeReady"].status
    assert ready["NetworkReady"].status, ready["NetworkReady"].message


def test_network_not_ready_without_cni_config(pycri_dir: Path) -> None:
    daemon = PycriProcess(pycri_dir, {"cni": {"install_default_config": False}}).start()
    try:
        ready = conditions(daemon)["NetworkReady"]
        assert not ready.status
        assert ready.reason == "NetworkPluginNotReady"
        assert str(pycri_dir / "cni") in ready.message
    finally:
        daemon.stop()


def test_network_not_ready_names_missing_plugin(pycri_dir: Path) -> None:
    daemon = PycriProcess(pycri_dir, {"cni": {"bin_dirs": [str(pycri_dir / "no-plugins")]}}).start()
    try:
        ready = conditions(daemon)["NetworkReady"]
        assert not ready.status
        assert "bridge" in ready.message
    finally:
        daemon.stop()
