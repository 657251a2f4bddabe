"""Reference runtimes for the benchmarks: an isolated containerd with its CRI plugin.

`IsolatedContainerd` runs Debian's containerd (1.6) from a config file of its own: root, state,
gRPC and ttrpc sockets, runc root and CNI conf dir under one temp dir, the CRI plugin's CNI
network on a bridge and subnet of its own (bench-ctrd0, 10.99.0.0/16, pycri's default conflist
otherwise), and a registry config that pulls from the local registry over plain HTTP. Nothing is
pulled from anywhere else: the sandbox image is given by the caller and must be pulled first.
`stop()` ends the daemon and the shims of this instance by pid, deletes its bridge and the cgroup
dirs it made, and removes its temp dir.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import psutil
from pull import loopback_env

from pycri.api import api_pb2, api_pb2_grpc
from pycri.network.cni_config import DEFAULT_CONFLIST_FILE, default_conflist
from tests.support.daemon import mounts_under, remove_tree, short_tempdir

CONTAINERD = "containerd"
SHIM = "containerd-shim-runc-v2"
CNI_BIN_DIR = "/usr/lib/cni"
BRIDGE = "bench-ctrd0"
SUBNET = "10.99.0.0/16"
CRI_NAMESPACE = "k8s.io"
# containerd 1.6 keeps shim sockets under a fixed dir, whatever its state dir is.
SHIM_SOCKET_ROOT = Path("/run/containerd")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/var/run/netns")
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b")
STARTUP_SECONDS = 30.0
STOP_SECONDS = 20.0
# Plugins that would probe or touch host paths outside the temp dir, and that CRI does not need.
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)


def containerd_available() -> bool:
    return shutil.which(CONTAINERD) is not None and shutil.which(SHIM) is not None


def containerd_version() -> str:
    output = subprocess.run([CONTAINERD, "--version"], capture_output=True, text=True, check=True).stdout.split()
    return output[2] if len(output) > 2 else "?"


def cgroup_dirs(cgroup_path: str) -> set[Path]:
    """The dirs of one cgroup in every hierarchy (v1 controllers and v2) where it exists."""
    relative = cgroup_path.strip("/")
    candidates = [CGROUP_ROOT / relative, *CGROUP_ROOT.glob(f"*/{relative}")]
    return {path.resolve() for path in candidates if path.is_dir()}


def cri_cgroup_dirs() -> set[Path]:
    return cgroup_dirs(CRI_NAMESPACE)


def remove_cgroup_tree(top: Path) -> None:
    """rmdir `top` and its children, deepest first (a cgroup dir goes with rmdir only)."""
    for directory, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def nat_rules_in(subnet: str) -> list[str]:
    """Lines of the nat table that name an address of `subnet`."""
    network = ipaddress.ip_network(subnet)
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in rules if any(_in_network(token, network) for token in IPV4.findall(line))]


def _in_network(token: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_interface(token).ip in network
    except ValueError:
        return False


def cni_netns_names() -> set[str]:
    """Network namespaces named the way containerd's CRI plugin names them."""
    if not NETNS_DIR.is_dir():
        return set()
    return {entry.name for entry in NETNS_DIR.iterdir() if entry.name.startswith("cni-")}


class IsolatedContainerd:
    """One containerd with a private everything; `stop()` ends exactly what it started."""

    def __init__(self, registry_host: str, sandbox_image: str) -> None:
        self.base = short_tempdir("bench-ctrd-")
        self.registry_host = registry_host
        self.sandbox_image = sandbox_image
        self.proc: subprocess.Popen[bytes] | None = None
        self._cgroups_before = cri_cgroup_dirs()
        self._netns_before = cni_netns_names()
        self._shim_socket_root_existed = SHIM_SOCKET_ROOT.exists()

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "containerd.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "containerd is not started"
        return self.proc.pid

    def config_text(self) -> str:
        base, cri = self.base, '"io.containerd.grpc.v1.cri"'
        disabled = ", ".join(f'"{name}"' for name in DISABLED_PLUGINS)
        return f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins.{cri}]
  sandbox_image = "{self.sandbox_image}"
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true

[plugins.{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins.{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{base}/runc"

[plugins.{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{base}/cni"
  max_conf_num = 1

[plugins.{cri}.registry]
  config_path = "{base}/certs.d"
"""

    def write_files(self) -> None:
        self.config_path.write_text(self.config_text())
        conf_dir = self.base / "cni"
        conf_dir.mkdir()
        network = default_conflist(SUBNET, BRIDGE, self.base / "ipam")
        (conf_dir / DEFAULT_CONFLIST_FILE).write_text(json.dumps(network, indent=2))
        hosts_dir = self.base / "certs.d" / self.registry_host
        hosts_dir.mkdir(parents=True)
        (hosts_dir / "hosts.toml").write_text(
            f'server = "http://{self.registry_host}"\n\n'
            f'[host."http://{self.registry_host}"]\n  capabilities = ["pull", "resolve"]\n'
        )

    def start(self) -> IsolatedContainerd:
        self.write_files()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=loopback_env(),
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if self.socket.exists():
                try:
                    with self.channel() as channel:
                        api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"containerd's CRI did not answer in {STARTUP_SECONDS}s:\n{self.log_path.read_text()}")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def shims(self) -> list[psutil.Process]:
        """The runc v2 shims serving this containerd (they name its socket in -address)."""
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if process.info["name"] == SHIM and str(self.socket) in cmdline:
                found.append(process)
        return found

    def leftovers(self) -> list[str]:
        """What this instance still has on the host once its pods are gone, one line each."""
        found = [f"shim pid {process.pid}" for process in self.shims()]
        found += [f"mount {point}" for point in mounts_under(self.base)]
        found += [f"netns {name}" for name in sorted(cni_netns_names() - self._netns_before)]
        found += [f"nat rule {line}" for line in nat_rules_in(SUBNET)]
        return found

    def _delete_runc_containers(self) -> None:
        """Containers a killed shim left running (only after a failed cleanup through CRI)."""
        runc_root = self.base / "runc" / CRI_NAMESPACE
        if not runc_root.is_dir():
            return
        for entry in runc_root.iterdir():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", entry.name], capture_output=True)

    def stop(self) -> list[str]:
        """End containerd, then any shim of this instance, then remove what it left on the host.

        Returns what is still there afterwards (its bridge, the CRI cgroup dirs it made).
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for shim in self.shims():
            shim.kill()
        self._delete_runc_containers()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        for directory in cri_cgroup_dirs() - self._cgroups_before:
            remove_cgroup_tree(directory)
        if not self._shim_socket_root_existed:
            for directory in (SHIM_SOCKET_ROOT / "s", SHIM_SOCKET_ROOT):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        remove_tree(self.base)
        found = [f"cgroup {path}" for path in sorted(cri_cgroup_dirs() - self._cgroups_before)]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        return found
