"""linux.resources (also the body of `runc update`), device cgroup rules and device nodes."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.oci.spec_errors import SpecError
from pycri.oci.spec_host import HostFacts, probe_host

log = logging.getLogger(__name__)

# Deny everything, then allow creating any node (CAP_MKNOD decides) and using the standard ones.
_STANDARD_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *(
        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
        for major, minor in (
            (1, 3),  # null
            (1, 5),  # zero
            (1, 7),  # full
            (1, 8),  # random
            (1, 9),  # urandom
            (5, 0),  # tty
            (5, 1),  # console
            (5, 2),  # ptmx
            (10, 200),  # net/tun
        )
    ),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts/*
]
_ALL_DEVICES_RULE: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
# Directories of the host's /dev that hold no device a privileged container should get as a node.
_HOST_DEV_SKIPPED = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def linux_resources(
    resources: api_pb2.LinuxContainerResources, host: HostFacts | None = None, field: str = "linux.resources"
) -> dict[str, Any]:
    """OCI linux.resources from CRI resources; zero fields are left out (CRI's "not set").

    The swap limit follows kubelet's expectation: equal to the memory limit (no swap) unless given.
    Controllers the host lacks (memsw, hugetlb, unified files on cgroup v1) are skipped with a log line.
    """
    _check_ranges(resources, field)
    host = host or probe_host()
    result: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        result["cpu"] = cpu

    memory: dict[str, Any] = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
    swap = resources.memory_swap_limit_in_bytes or resources.memory_limit_in_bytes
    if swap and host.swap_limit:
        memory["swap"] = swap
    elif resources.memory_swap_limit_in_bytes:
        log.warning("swap limit skipped: the host cannot limit swap", extra={"fields": {"swap": swap}})
    if memory:
        result["memory"] = memory

    if resources.hugepage_limits:
        if host.hugetlb:
            result["hugepageLimits"] = [
                {"pageSize": limit.page_size, "limit": limit.limit} for limit in resources.hugepage_limits
            ]
        else:
            log.warning("hugepage limits skipped: no hugetlb controller", extra={"fields": {}})

    if resources.unified:
        if host.cgroup_unified:
            result["unified"] = dict(resources.unified)
        else:
            log.warning(
                "unified cgroup settings skipped on cgroup v1", extra={"fields": {"keys": sorted(resources.unified)}}
            )
    return result


# Fields no value below 0 makes sense for; -1 ("no limit") is allowed for cpu_quota and swap.
_NON_NEGATIVE = ("cpu_period", "cpu_shares", "memory_limit_in_bytes")
_UNLIMITED_OR_MORE = ("cpu_quota", "memory_swap_limit_in_bytes")


def _check_ranges(resources: api_pb2.LinuxContainerResources, field: str) -> None:
    """SpecError naming a resource value runc would refuse only later (and as UNKNOWN)."""
    for name in _NON_NEGATIVE:
        if getattr(resources, name) < 0:
            raise SpecError(f"{field}.{name}: {getattr(resources, name)} is negative")
    for name in _UNLIMITED_OR_MORE:
        if getattr(resources, name) < -1:
            raise SpecError(f"{field}.{name}: {getattr(resources, name)} is below -1 (no limit)")
    for index, limit in enumerate(resources.hugepage_limits):
        if limit.limit < 0:
            raise SpecError(f"{field}.hugepage_limits[{index}].limit: {limit.limit} is negative")


def device_cgroup_rules(privileged: bool) -> list[dict[str, Any]]:
    return [dict(rule) for rule in (_ALL_DEVICES_RULE if privileged else _STANDARD_DEVICE_RULES)]


def _device_node(path: str, info: os.stat_result) -> dict[str, Any]:
    return {
        "path": path,
        "type": "c" if stat.S_ISCHR(info.st_mode) else "b",
        "major": os.major(info.st_rdev),
        "minor": os.minor(info.st_rdev),
        "fileMode": stat.S_IMODE(info.st_mode),
        "uid": info.st_uid,
        "gid": info.st_gid,
    }


def _is_device(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)


def _devices_under(
    directory: Path, container_directory: str, skipped: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Device nodes below a host directory, symlinks not followed, at the same relative paths."""
    nodes = []
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
        if entry.name in skipped:
            continue
        target = f"{container_directory.rstrip('/')}/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            nodes.extend(_devices_under(Path(entry.path), target))
            continue
        info = entry.stat(follow_symlinks=False)
        if _is_device(info):
            nodes.append(_device_node(target, info))
    return nodes


def host_devices(dev_dir: Path) -> list[dict[str, Any]]:
    """Every device of the host's /dev for a privileged container (as runc's own list, /dev/console aside)."""
    return [node for node in _devices_under(dev_dir, "/dev", _HOST_DEV_SKIPPED) if node["path"] != "/dev/console"]


def requested_devices(devices: list[api_pb2.Device]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Device nodes and cgroup allow rules for CRI devices; a host directory brings every device below it.

    Empty permissions mean "rwm". A missing host path or one that is no device is a SpecError.
    """
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for number, device in enumerate(devices):
        field = f"devices[{number}]"
        permissions = device.permissions or "rwm"
        if set(permissions) - set("rwm"):
            raise SpecError(f"{field}.permissions: {device.permissions!r} is not a combination of r, w and m")
        if not device.container_path.startswith("/"):
            raise SpecError(f"{field}.container_path: {device.container_path!r} is not absolute")
        try:
            info = os.stat(device.host_path)
        except OSError as err:
            raise SpecError(f"{field}.host_path: {device.host_path!r}: {err.strerror}") from err
        if _is_device(info):
            found = [_device_node(device.container_path, info)]
        elif stat.S_ISDIR(info.st_mode):
            found = _devices_under(Path(device.host_path), device.container_path)
        else:
            raise SpecError(f"{field}.host_path: {device.host_path!r} is not a device")
        nodes.extend(found)
        rules.extend(
            {"allow": True, "type": node["type"], "major": node["major"], "minor": node["minor"], "access": permissions}
            for node in found
        )
    return nodes, rules
