"""What the host offers that changes a spec: cgroup mode, controllers, AppArmor, pycri's own capabilities.

The static facts are probed once per process; the loaded AppArmor profiles are read on each call,
since an administrator may load one at any time. Tests pass hand-made HostFacts instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from pycri.oci.spec_security import capability_names_from_mask

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class HostFacts:
    cgroup_unified: bool  # cgroup v2 unified mode; False on v1 and on hybrid hosts
    swap_limit: bool  # memory+swap limits can be set (memsw on v1, memory.swap.max on v2)
    hugetlb: bool  # the hugetlb controller is there for the mode in use
    apparmor_enabled: bool
    apparmor_profiles: frozenset[str]  # names of the loaded AppArmor profiles
    capabilities: tuple[str, ...]  # pycri's own effective capabilities: "all" for privileged containers
    machine: str  # platform.machine(): x86_64, aarch64, ...
    kernel: str  # platform.release()
    mountinfo: Path = Path("/proc/self/mountinfo")
    dev_dir: Path = Path("/dev")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _own_unified_cgroup() -> str:
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _apparmor_profiles() -> frozenset[str]:
    text = _read(Path("/sys/kernel/security/apparmor/profiles"))
    return frozenset(line.rsplit(" (", 1)[0] for line in text.splitlines() if line)


def _own_capabilities() -> tuple[str, ...]:
    for line in _read(Path("/proc/self/status")).splitlines():
        if line.startswith("CapEff:"):
            return capability_names_from_mask(int(line.split()[1], 16))
    return ()


@functools.cache
def _static_facts() -> HostFacts:
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()
    if unified:
        swap_file = CGROUP_ROOT / _own_unified_cgroup().lstrip("/") / "memory.swap.max"
        hugetlb = "hugetlb" in _read(CGROUP_ROOT / "cgroup.controllers").split()
    else:
        swap_file = CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes"
        hugetlb = (CGROUP_ROOT / "hugetlb").is_dir()
    apparmor = _read(Path("/sys/module/apparmor/parameters/enabled")).strip() == "Y"
    return HostFacts(
        cgroup_unified=unified,
        swap_limit=os.path.exists(swap_file),
        hugetlb=hugetlb,
        apparmor_enabled=apparmor,
        apparmor_profiles=frozenset(),
        capabilities=_own_capabilities(),
        machine=platform.machine(),
        kernel=platform.release(),
    )


def probe_host() -> HostFacts:
    facts = _static_facts()
    if not facts.apparmor_enabled:
        return facts
    return dataclasses.replace(facts, apparmor_profiles=_apparmor_profiles())
