"""`pycri check`: can this host run pycri with this config? Each check says what it found and, when
something is missing, how to get it (Debian 12 package names).

Versions of runc, conmon and the CNI plugins come from pycri/hostinfo.py; the cgroup layout from
pycri/cgroups. A failed required check makes `pycri check` exit 1; a warning does not.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pycri.cgroups import CgroupLayout, host_layout
from pycri.config import Config
from pycri.hostinfo import HostInfo, is_executable
from pycri.network.cni_config import load_default_network
from pycri.oci.apparmor import APPARMOR_PARSER, ENABLED_FILE, apparmor_enabled

# Debian 12 packages that hold the programs pycri runs, by program name.
PACKAGES = {
    "runc": "runc",
    "crun": "crun",
    "conmon": "conmon",
    "iptables": "iptables",
    "apparmor_parser": "apparmor",
}
CNI_PACKAGE = "containernetworking-plugins"
V1_CONTROLLERS_NEEDED: tuple[str, ...] = ("cpu", "cpuacct", "devices", "freezer", "memory", "pids")
V2_CONTROLLERS_NEEDED: tuple[str, ...] = ("cpu", "memory", "pids")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True  # a failed required check makes `pycri check` exit 1

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "MISSING" if self.required else "warning"


@dataclass(frozen=True)
class HostFiles:
    """Where the checks read the host (tests point them at files of their own)."""

    filesystems: Path = Path("/proc/filesystems")
    process_status: Path = Path("/proc/self/status")
    modules_dir: Path = Path("/lib/modules") / platform.release()
    systemd_dir: Path = Path("/run/systemd/system")  # exists when systemd is PID 1 (sd_booted)
    apparmor_enabled: Path = ENABLED_FILE
    apparmor_parser: Path = APPARMOR_PARSER
    euid: int = field(default_factory=os.geteuid)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def install_hint(program: Path | str, key: str) -> str:
    package = PACKAGES.get(Path(program).name)
    return f"apt-get install {package}" if package else f"install {Path(program).name}, or set {key}"


def check_host(
    config: Config, info: HostInfo, layout: CgroupLayout | None = None, files: HostFiles | None = None
) -> list[Check]:
    files = files or HostFiles()
    layout = layout or host_layout()
    return [
        Check(
            "root",
            files.euid == 0,
            "running as root" if files.euid == 0 else f"running as uid {files.euid}",
            "run pycri as root: it mounts, makes namespaces and cgroups",
        ),
        *_runtime_checks(config, info),
        _conmon_check(config, info),
        *_cni_checks(config, info),
        _iptables_check(),
        _cgroups_check(layout, files),
        _cgroup_driver_check(config, files),
        _overlay_check(files),
        _seccomp_check(files),
        _apparmor_check(files),
    ]


def _runtime_checks(config: Config, info: HostInfo) -> list[Check]:
    checks = []
    for name, handler in config.runtime.handlers.items():
        binary = info.runtimes[name]
        default = name == config.runtime.default_handler
        key = f"runtime.handlers.{name}.path"
        if binary.version is None:
            found = (
                f"{handler.path} is not an executable file"
                if not is_executable(handler.path)
                else f"{handler.path} does not run"
            )
            checks.append(Check(f"runtime {name}", False, found, install_hint(handler.path, key), required=default))
            continue
        seccomp = next((line for line in binary.build if line.startswith("libseccomp:")), None)
        if seccomp is None and any("+SECCOMP" in line.split() for line in binary.build):
            seccomp = "+SECCOMP"
        found = f"{handler.path}: {binary.version}" + (f" ({seccomp})" if seccomp else "")
        if seccomp is None:
            fix = f"use a build with seccomp: {install_hint(handler.path, key)}"
            checks.append(Check(f"runtime {name}", False, f"{found}, built without seccomp", fix, required=default))
        else:
            checks.append(Check(f"runtime {name}", True, found))
    return checks


def _conmon_check(config: Config, info: HostInfo) -> Check:
    conmon = config.runtime.conmon
    if info.conmon.version is None:
        return Check(
            "conmon",
            False,
            f"{conmon} is not an executable file or does not run",
            install_hint(conmon, "runtime.conmon"),
        )
    return Check("conmon", True, f"{conmon}: {info.conmon.version}")


def _cni_checks(config: Config, info: HostInfo) -> list[Check]:
    dirs = ", ".join(map(str, config.cni.bin_dirs))
    checks = [
        Check(f"CNI plugin {name}", True, plugin.path)
        if plugin.path
        else Check(f"CNI plugin {name}", False, f"not in {dirs}", f"apt-get install {CNI_PACKAGE}, or set cni.bin_dirs")
        for name, plugin in info.cni_plugins.items()
    ]
    network = load_default_network(config.cni.conf_dir)
    if network is not None:
        checks.append(Check("CNI network", True, f"{network.name} from {config.cni.conf_dir}"))
    elif config.cni.install_default_config:
        found = f"none in {config.cni.conf_dir} yet: pycri writes its default ({config.cni.default_subnet}) at start"
        checks.append(Check("CNI network", True, found))
    else:
        checks.append(
            Check(
                "CNI network",
                False,
                f"no valid network config in {config.cni.conf_dir}",
                f"put a conflist in {config.cni.conf_dir}, or set cni.install_default_config = true",
                required=False,
            )
        )
    return checks


def _iptables_check() -> Check:
    found = shutil.which("iptables")
    if found is None:
        return Check(
            "iptables", False, "not on PATH (the bridge and portmap plugins need it)", "apt-get install iptables"
        )
    return Check("iptables", True, found)


def _cgroups_check(layout: CgroupLayout, files: HostFiles) -> Check:
    if layout.unified is not None:
        mode = f"v2 at {layout.unified}"
        available = set(_read(layout.unified / "cgroup.controllers").split())
        needed = V2_CONTROLLERS_NEEDED
    elif layout.v1:
        mode = "v1" + (f" (hybrid: v2 also at {layout.hybrid_unified})" if layout.hybrid_unified else "")
        available = set(layout.v1)
        needed = V1_CONTROLLERS_NEEDED
    else:
        return Check("cgroups", False, "no cgroup file system is mounted", "mount cgroup2 at /sys/fs/cgroup")
    lacking = [name for name in needed if name not in available]
    if lacking:
        return Check(
            "cgroups",
            False,
            f"{mode}; controllers missing: {', '.join(lacking)}",
            f"enable them on the kernel command line (e.g. cgroup_enable={lacking[0]})",
        )
    return Check("cgroups", True, f"{mode}; controllers {', '.join(needed)}")


def _cgroup_driver_check(config: Config, files: HostFiles) -> Check:
    driver = config.runtime.cgroup_driver
    systemd = files.systemd_dir.is_dir()
    if driver == "systemd" and not systemd:
        return Check(
            "cgroup driver",
            False,
            "systemd, but systemd does not run this host",
            'set runtime.cgroup_driver = "cgroupfs" (and kubelet\'s cgroupDriver to match)',
        )
    return Check("cgroup driver", True, driver + (" (systemd runs this host)" if systemd else ""))


def _overlay_check(files: HostFiles) -> Check:
    if any(line.split()[-1:] == ["overlay"] for line in _read(files.filesystems).splitlines()):
        return Check("overlayfs", True, "in the kernel")
    if "/overlay.ko" in _read(files.modules_dir / "modules.dep"):
        return Check("overlayfs", True, "a module the kernel loads on first mount")
    return Check(
        "overlayfs",
        False,
        "not in the kernel and no overlay module",
        "modprobe overlay, or a kernel with CONFIG_OVERLAY_FS",
    )


def _seccomp_check(files: HostFiles) -> Check:
    if "Seccomp:" in _read(files.process_status):
        return Check("seccomp", True, "the kernel filters system calls (RuntimeDefault profile available)")
    return Check("seccomp", False, "the kernel has no seccomp", "a kernel built with CONFIG_SECCOMP_FILTER")


def _apparmor_check(files: HostFiles) -> Check:
    if not apparmor_enabled(files.apparmor_enabled):
        return Check("AppArmor", True, "not enabled in the kernel: containers run without an AppArmor profile")
    if not is_executable(files.apparmor_parser):
        found = f"enabled, but {files.apparmor_parser} is missing: RuntimeDefault runs unconfined"
        return Check("AppArmor", False, found, "apt-get install apparmor", required=False)
    return Check("AppArmor", True, f"enabled; {files.apparmor_parser} loads the default profile")


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<8} {check.name:<{width}}  {check.found}")
        if not check.ok:
            lines.append(f"{'':<8} {'':<{width}}  fix: {check.fix}")
    failed = [check for check in checks if not check.ok and check.required]
    lines.append(f"{len(failed)} required check(s) failed" if failed else "this host can run pycri")
    return "\n".join(lines) + "\n"
