"""Apply CDI container edits to an OCI spec (config.json as a dict), in the order the devices were
resolved: env, device nodes (with their device cgroup rules), mounts, hooks, Intel RDT and
additional GIDs, as the CDI reference applies them."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

from pycri.cdi.registry import ResolvedDevices
from pycri.cdi.spec import NO_PERMISSIONS, ContainerEdits, DeviceNode, IntelRdt, Mount
from pycri.errors import FailedPrecondition
from pycri.oci.spec_edits import add_device_node, oci_hook, set_env, sort_mounts

_HOST_TYPES = {stat.S_IFBLK: "b", stat.S_IFCHR: "c", stat.S_IFIFO: "p"}


class CdiInjectionError(FailedPrecondition):
    """A resolved device cannot be given to the container on this host (its node is missing,
    or it needs what the runtime cannot do); the message names the device."""


def inject_devices(spec: dict[str, Any], resolved: ResolvedDevices) -> None:
    """Edit `spec` in place (a blocking call: device nodes are looked up on the host)."""
    devices = ", ".join(resolved.names)
    for edits in resolved.edits:
        try:
            _apply(spec, edits)
        except CdiInjectionError as err:
            raise CdiInjectionError(f"CDI devices {devices}: {err}") from None


def _apply(spec: dict[str, Any], edits: ContainerEdits) -> None:
    if edits.net_devices:
        names = ", ".join(device.host_interface_name for device in edits.net_devices)
        raise CdiInjectionError(f"netDevices ({names}): moving host interfaces is not supported by pycri's runtimes")
    process = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    env: list[str] = process.setdefault("env", [])
    for variable in edits.env:
        set_env(env, variable)
    for node in edits.device_nodes:
        _add_device_node(process, linux, node)
    if edits.mounts:
        for mount in edits.mounts:
            _add_mount(spec, mount)
        sort_mounts(spec["mounts"])
    for hook in edits.hooks:
        entry = oci_hook(hook.path, hook.args, hook.env, hook.timeout)
        spec.setdefault("hooks", {}).setdefault(hook.hook_name, []).append(entry)
    if edits.intel_rdt is not None:
        linux["intelRdt"] = _oci_intel_rdt(edits.intel_rdt)
    gids = process.setdefault("user", {}).setdefault("additionalGids", [])
    gids.extend(gid for gid in dict.fromkeys(edits.additional_gids) if gid and gid not in gids)


def _host_node(node: DeviceNode) -> DeviceNode:
    """The node with what it leaves out (type, major, minor, file mode) read from the host's node."""
    host_path = node.host_path or node.path
    fully_given = bool(node.type) and (node.major != 0 or node.type == "p")
    try:
        info = os.lstat(host_path)
        host_type = _HOST_TYPES.get(stat.S_IFMT(info.st_mode))
        if host_type is None:
            raise CdiInjectionError(f"{host_path} is not a device node")
    except (OSError, CdiInjectionError) as err:
        if fully_given:
            return node
        why = err.strerror if isinstance(err, OSError) else str(err)
        raise CdiInjectionError(f"device node {node.path}: host node {host_path}: {why}") from None
    mode = node.file_mode if node.file_mode is not None else stat.S_IMODE(info.st_mode)
    if fully_given:
        return dataclasses.replace(node, file_mode=mode)
    node_type = node.type or host_type
    if node_type != host_type and not (node_type == "u" and host_type == "c"):
        raise CdiInjectionError(f"device node {node.path}: type {node_type!r}, but {host_path} is {host_type!r}")
    major, minor = node.major, node.minor
    if node_type != "p" and major == 0:
        major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    return dataclasses.replace(node, type=node_type, major=major, minor=minor, file_mode=mode)


def _add_device_node(process: dict[str, Any], linux: dict[str, Any], given: DeviceNode) -> None:
    node = _host_node(given)
    device: dict[str, Any] = {"path": node.path, "type": node.type, "major": node.major, "minor": node.minor}
    if node.file_mode is not None:
        device["fileMode"] = node.file_mode
    user = process.get("user") or {}
    # Owned by the container's user unless the spec says otherwise, so that user can open it.
    uid = node.uid if node.uid is not None else user.get("uid") or None
    gid = node.gid if node.gid is not None else user.get("gid") or None
    if uid is not None:
        device["uid"] = uid
    if gid is not None:
        device["gid"] = gid
    add_device_node(linux, device, {"": "rwm", NO_PERMISSIONS: ""}.get(node.permissions, node.permissions))


def _add_mount(spec: dict[str, Any], mount: Mount) -> None:
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    mounts[:] = [existing for existing in mounts if existing.get("destination") != mount.container_path]
    entry: dict[str, Any] = {"destination": mount.container_path, "source": mount.host_path}
    if mount.type:
        entry["type"] = mount.type
    # In a pod's user namespace CreateContainer stages the bind ID-mapped (pycri.userns.mounts):
    # runc 1.1 knows no idmap option.
    if mount.options:
        entry["options"] = list(mount.options)
    mounts.append(entry)


def _oci_intel_rdt(rdt: IntelRdt) -> dict[str, Any]:
    if rdt.schemata is not None or rdt.enable_monitoring:
        raise CdiInjectionError("intelRdt schemata and enableMonitoring (runtime-spec 1.3) are ignored by runc 1.1")
    names = {"closID": rdt.clos_id, "l3CacheSchema": rdt.l3_cache_schema, "memBwSchema": rdt.mem_bw_schema}
    return {key: value for key, value in names.items() if value}
