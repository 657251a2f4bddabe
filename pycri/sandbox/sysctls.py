"""Pod sysctls: only namespaced ones, written inside the pod's own net or IPC namespace.

A disposable thread joins the pinned namespace and writes /proc/sys there: /proc/sys/net
and the IPC sysctls answer for the namespaces of the thread that opens them, so the host's
values are never touched. A sysctl for a namespace the pod shares with the host is refused.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pycri.errors import InvalidArgument
from pycri.network.netns import enter_namespace, run_in_disposable_thread

PROC_SYS = Path("/proc/sys")

SysctlNamespace = Literal["net", "ipc"]


@dataclass(frozen=True)
class Sysctl:
    name: str  # dot-separated, as `sysctl` prints it
    parts: tuple[str, ...]  # the path below /proc/sys
    namespace: SysctlNamespace
    value: str


def _split(name: str) -> tuple[str, ...]:
    """Path components of a sysctl named with dots ("net.ipv4.ip_forward") or slashes
    ("net/ipv4/conf/eth0.100/forwarding", where dots belong to the components)."""
    separators = [c for c in name if c in "./"]
    if separators and separators[0] == "/":
        parts = tuple(name.split("/"))
    else:  # in the dotted form a slash stands for a dot inside a component
        parts = tuple(part.replace("/", ".") for part in name.split("."))
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise InvalidArgument(f"sysctl {name!r} is not a valid sysctl name")
    return parts


def _namespace_of(parts: tuple[str, ...]) -> SysctlNamespace | None:
    if parts[0] == "net" and len(parts) > 1:
        return "net"
    if len(parts) == 2 and parts[0] == "kernel" and (parts[1].startswith(("shm", "msg")) or parts[1] == "sem"):
        return "ipc"
    if len(parts) > 2 and parts[:2] == ("fs", "mqueue"):
        return "ipc"
    return None


def parse_sysctls(sysctls: Mapping[str, str], *, host_network: bool, host_ipc: bool) -> list[Sysctl]:
    """Check the pod's sysctls before anything is set up; InvalidArgument names the first bad one."""
    parsed = []
    for name, value in sorted(sysctls.items()):
        parts = _split(name)
        dotted = ".".join(part.replace(".", "/") for part in parts)
        namespace = _namespace_of(parts)
        if namespace is None:
            raise InvalidArgument(
                f"sysctl {dotted!r} is not namespaced: a pod may only set net.*, kernel.shm*, "
                "kernel.msg*, kernel.sem and fs.mqueue.* sysctls"
            )
        if namespace == "net" and host_network:
            raise InvalidArgument(f"sysctl {dotted!r} would change the host: the pod uses the host network")
        if namespace == "ipc" and host_ipc:
            raise InvalidArgument(f"sysctl {dotted!r} would change the host: the pod uses the host IPC namespace")
        if "\0" in value or "\n" in value.strip():
            raise InvalidArgument(f"sysctl {dotted!r}: value {value!r} is not a single line")
        parsed.append(Sysctl(dotted, parts, namespace, value.strip()))
    return parsed


def _write(sysctl: Sysctl) -> None:
    path = PROC_SYS.joinpath(*sysctl.parts)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InvalidArgument(f"sysctl {sysctl.name!r} does not exist in the pod's namespace") from None
    except OSError as exc:
        raise InvalidArgument(f"sysctl {sysctl.name!r} cannot be set: {os.strerror(exc.errno or 0)}") from None
    try:
        os.write(fd, sysctl.value.encode())
    except OSError as exc:
        why = "invalid value" if exc.errno == errno.EINVAL else os.strerror(exc.errno or 0)
        raise InvalidArgument(f"sysctl {sysctl.name!r} = {sysctl.value!r}: {why}") from None
    finally:
        os.close(fd)


def apply_sysctls(sysctls: list[Sysctl], *, netns_path: Path | None, ipc_path: Path | None) -> None:
    """Write the sysctls inside the pinned namespaces (blocking: call it from a thread)."""
    if not sysctls:
        return
    pins: dict[SysctlNamespace, Path | None] = {"net": netns_path, "ipc": ipc_path}

    def write_all() -> None:
        for kind in sorted({sysctl.namespace for sysctl in sysctls}):
            pin = pins[kind]
            if pin is None:
                raise InvalidArgument(f"a {kind} sysctl needs the pod's own {kind} namespace")
            enter_namespace(pin, kind)
        for sysctl in sysctls:
            _write(sysctl)

    run_in_disposable_thread(write_all)
