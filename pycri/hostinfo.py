"""What the host offers pycri: versions of runc, conmon, the CNI plugins, and what is missing.

Used by `pycri info` and by the verbose Status reply.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pycri import __version__
from pycri.config import Config

DEFAULT_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


@dataclass
class BinaryInfo:
    path: str
    version: str | None = None  # None when the binary is missing or does not run
    cni_versions: list[str] = field(default_factory=list)
    # The rest of what `--version` printed: runc's "libseccomp: 2.5.4", crun's "+SECCOMP +APPARMOR ...".
    build: list[str] = field(default_factory=list)


@dataclass
class HostInfo:
    pycri: str
    runtimes: dict[str, BinaryInfo]
    conmon: BinaryInfo
    cni_plugins: dict[str, BinaryInfo]
    missing: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_plugin(name: str, bin_dirs: list[Path]) -> Path | None:
    for directory in bin_dirs:
        candidate = directory / name
        if is_executable(candidate):
            return candidate
    return None


def _output_lines(args: list[str], timeout: float, env: dict[str, str] | None = None) -> list[str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (done.stdout or done.stderr).strip().splitlines()


def _first_line(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str | None:
    lines = _output_lines(args, timeout, env)
    return lines[0] if lines else None


def _binary_info(path: Path, timeout: float) -> BinaryInfo:
    """`path --version`: its first line is the version, the others describe the build."""
    info = BinaryInfo(str(path))
    if is_executable(path):
        lines = _output_lines([str(path), "--version"], timeout)
        info.version, info.build = (lines[0], lines[1:]) if lines else (None, [])
    return info


def _plugin_info(path: Path, timeout: float) -> BinaryInfo:
    version = _first_line([str(path)], timeout, env={}) or "unknown"
    about = _first_line([str(path)], timeout, env={"CNI_COMMAND": "VERSION"})
    try:
        supported = json.loads(about or "{}").get("supportedVersions", [])
    except json.JSONDecodeError:
        supported = []
    return BinaryInfo(str(path), version, supported)


def collect_host_info(config: Config, plugins: tuple[str, ...] = DEFAULT_PLUGINS) -> HostInfo:
    missing: list[str] = []
    runtimes: dict[str, BinaryInfo] = {}
    for name, handler in config.runtime.handlers.items():
        runtimes[name] = _binary_info(handler.path, config.timeouts.runtime)
        if not is_executable(handler.path):
            missing.append(f"runtime handler {name!r}: {handler.path} is not an executable file")
    conmon = _binary_info(config.runtime.conmon, config.timeouts.runtime)
    if not is_executable(config.runtime.conmon):
        missing.append(f"conmon: {config.runtime.conmon} is not an executable file")
    cni: dict[str, BinaryInfo] = {}
    for plugin in plugins:
        found = find_plugin(plugin, config.cni.bin_dirs)
        if found is None:
            missing.append(f"CNI plugin {plugin!r}: not in {', '.join(map(str, config.cni.bin_dirs))}")
            cni[plugin] = BinaryInfo("")
        else:
            cni[plugin] = _plugin_info(found, config.timeouts.cni)
    return HostInfo(__version__, runtimes, conmon, cni, missing)
