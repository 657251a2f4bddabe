"""Start a real `pycri serve` on a private socket with private root, state and CNI dirs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pycri.api import api_pb2_grpc
from pycri.config import toml_value

REPO = Path(__file__).resolve().parents[2]


def render_toml(table: dict[str, Any], prefix: str = "") -> str:
    scalars = [f'"{k}" = {toml_value(v)}' for k, v in table.items() if not isinstance(v, dict)]
    text = (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n"
    for key, value in table.items():
        if isinstance(value, dict):
            name = f'{prefix}."{key}"' if prefix else key
            text += "\n" + render_toml(value, name)
    return text


@dataclass
class PycriProcess:
    """A pycri daemon owned by one test; `stop()` ends exactly the process it started."""

    base: Path
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "state" / "pycri.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_path(self) -> Path:
        return self.base / "pycri.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "pycri.log"

    def write_config(self) -> None:
        table: dict[str, Any] = {
            "socket": str(self.socket),
            "root_dir": str(self.base / "root"),
            "state_dir": str(self.base / "state"),
            "log_level": "debug",
            "cni": {"conf_dir": str(self.base / "cni")},
            # NRI is on by default: each daemon gets its own socket and an empty plugin dir.
            "nri": {
                "socket_path": str(self.base / "state" / "nri.sock"),
                "plugin_path": str(self.base / "nri-plugins"),
            },
        }
        for key, value in self.settings.items():
            if isinstance(value, dict) and isinstance(table.get(key), dict):
                table[key].update(value)
            else:
                table[key] = value
        self.config_path.write_text(render_toml(table))

    def start(self, wait: bool = True) -> PycriProcess:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pycri", "--config", str(self.config_path), "serve"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **self.env},
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pycri exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if self.socket.exists():
                try:
                    with grpc.insecure_channel(self.endpoint) as channel:
                        grpc.channel_ready_future(channel).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"pycri did not come up in {timeout}s:\n{self.log_path.read_text()}")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def short_tempdir(prefix: str = "pycri-") -> Path:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """rmtree that first detaches anything mounted inside, so it never deletes through a mount."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
