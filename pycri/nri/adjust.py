"""Plugins' adjustments to a container being created, checked and applied to its OCI spec dict.

Each plugin's ContainerAdjustment is applied in plugin order, so a later plugin sees the
earlier ones' work. Two plugins may not set the same thing (an annotation, a mount
destination, an environment variable, a resource field...): the second is an error, as
in NRI, unless it first removes the earlier value with a removal mark (a key or
destination prefixed with "-"). What pycri cannot do (CDI devices, seccomp policies,
RDT and block I/O classes, I/O priority, scheduling, memory policy, network devices) is
refused by name rather than ignored, and so is a change to the namespaces that a pod's own
user namespace owns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from pycri.nri.pb import api_pb2 as nri
from pycri.oci.spec_edits import add_device_node, oci_hook, remove_device_node, remove_env, set_env, sort_mounts

REMOVAL_MARK = "-"
_RLIMIT = re.compile(r"RLIMIT_[A-Z]+")
_UNSUPPORTED_LINUX = (
    "io_priority",
    "seccomp_policy",
    "scheduler",
    "rdt",
    "memory_policy",
)
_MEMORY_FIELDS = (
    ("limit", "limit"),
    ("reservation", "reservation"),
    ("swap", "swap"),
    ("kernel", "kernel"),
    ("kernel_tcp", "kernelTCP"),
    ("swappiness", "swappiness"),
    ("disable_oom_killer", "disableOOMKiller"),
    ("use_hierarchy", "useHierarchy"),
)
_CPU_FIELDS = (
    ("shares", "shares"),
    ("quota", "quota"),
    ("period", "period"),
    ("realtime_runtime", "realtimeRuntime"),
    ("realtime_period", "realtimePeriod"),
)
_HOOK_FIELDS = (
    ("prestart", "prestart"),
    ("create_runtime", "createRuntime"),
    ("create_container", "createContainer"),
    ("start_container", "startContainer"),
    ("poststart", "poststart"),
    ("poststop", "poststop"),
)


# What NRI calls each thing a plugin may own (api.proto's Field), for validator plugins.
_SIMPLE_FIELDS = {
    "args": nri.Args,
    "cgroups path": nri.CgroupsPath,
    "oom_score_adj": nri.OomScoreAdj,
    "pids.limit": nri.PidsLimit,
    "memory.limit": nri.MemLimit,
    "memory.reservation": nri.MemReservation,
    "memory.swap": nri.MemSwapLimit,
    "memory.kernel": nri.MemKernelLimit,
    "memory.kernelTCP": nri.MemTCPLimit,
    "memory.swappiness": nri.MemSwappiness,
    "memory.disableOOMKiller": nri.MemDisableOomKiller,
    "memory.useHierarchy": nri.MemUseHierarchy,
    "cpu.shares": nri.CPUShares,
    "cpu.quota": nri.CPUQuota,
    "cpu.period": nri.CPUPeriod,
    "cpu.realtimeRuntime": nri.CPURealtimeRuntime,
    "cpu.realtimePeriod": nri.CPURealtimePeriod,
    "cpu.cpus": nri.CPUSetCPUs,
    "cpu.mems": nri.CPUSetMems,
}
_COMPOUND_FIELDS = {
    "annotation": nri.Annotations,
    "mount": nri.Mounts,
    "env": nri.Env,
    "device": nri.Devices,
    "rlimit": nri.Rlimits,
    "hugepage limit": nri.HugepageLimits,
    "unified": nri.CgroupsUnified,
    "sysctl": nri.Sysctl,
    "namespace": nri.Namespace,
}


# The namespaces a pod's own user namespace owns (pycri unshares them with it): a plugin may neither
# take them from the pod's containers nor swap them for others, which the pod's root could not use
# or which would belong to no user namespace of the pod's.
_USERNS_OWNED = ("user", "network", "ipc", "uts")


class AdjustmentError(ValueError):
    """A plugin asked for something invalid, unsupported, or already set by another plugin."""


class UserNamespaceConflict(AdjustmentError):
    """A plugin adjusts a namespace that the pod's own user namespace owns."""


def _removed(key: str) -> str | None:
    return key[len(REMOVAL_MARK) :] if key.startswith(REMOVAL_MARK) else None


class SpecAdjuster:
    def __init__(self, spec: dict[str, Any], min_oom_score_adj: int) -> None:
        self.spec = spec
        self._min_oom_score_adj = min_oom_score_adj
        self._own_user_namespace = any(n.get("type") == "user" for n in spec.get("linux", {}).get("namespaces") or [])
        self._owners: dict[tuple[str, str], str] = {}
        self._hook_owners: list[str] = []

    def apply(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        """Apply one plugin's adjustment; AdjustmentError leaves the spec partly changed (the create fails)."""
        self._refuse_unsupported(plugin, adjust)
        self._annotations(plugin, adjust)
        self._mounts(plugin, adjust)
        self._env(plugin, adjust)
        self._hooks(plugin, adjust)
        self._rlimits(plugin, adjust)
        if adjust.args:
            self._claim(plugin, "args", "")
            args = list(adjust.args)
            self._process()["args"] = args[1:] if _removed(args[0]) == "" else args
        linux = adjust.linux
        self._devices(plugin, linux)
        if linux.HasField("resources"):
            self.apply_resources(plugin, linux.resources)
        if linux.cgroups_path:
            self._cgroups_path(plugin, linux.cgroups_path)
        if linux.HasField("oom_score_adj"):
            self._oom_score_adj(plugin, linux.oom_score_adj.value)
        self._sysctl(plugin, linux)
        self._namespaces(plugin, linux)

    def _claim(self, plugin: str, field: str, key: str) -> None:
        owner = self._owners.setdefault((field, key), plugin)
        if owner != plugin:
            what = f"{field} {key!r}" if key else field
            raise AdjustmentError(f"plugins {owner} and {plugin} both adjust {what}")

    def _release(self, field: str, key: str) -> None:
        self._owners.pop((field, key), None)

    def _process(self) -> dict[str, Any]:
        process: dict[str, Any] = self.spec.setdefault("process", {})
        return process

    def _linux(self) -> dict[str, Any]:
        linux: dict[str, Any] = self.spec.setdefault("linux", {})
        return linux

    def _refuse_unsupported(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        unsupported = [f"linux.{name}" for name in _UNSUPPORTED_LINUX if adjust.linux.HasField(name)]
        if adjust.CDI_devices:
            unsupported.append("CDI_devices")
        if adjust.linux.net_devices:
            unsupported.append("linux.net_devices")
        resources = adjust.linux.resources
        unsupported += [f"linux.resources.{n}" for n in ("blockio_class", "rdt_class") if resources.HasField(n)]
        if resources.devices:
            unsupported.append("linux.resources.devices")
        if unsupported:
            raise AdjustmentError(f"plugin {plugin} asks for what pycri does not support: {', '.join(unsupported)}")

    def _annotations(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        if adjust.annotations:
            self._merge_map(plugin, "annotation", self.spec.setdefault("annotations", {}), adjust.annotations)

    def _merge_map(self, plugin: str, field: str, target: dict[str, str], entries: Mapping[str, str]) -> None:
        """Set and remove (marked) keys of one of the spec's string maps."""
        for key, value in sorted(entries.items(), key=lambda entry: _removed(entry[0]) is None):  # removals first
            if (removed := _removed(key)) is not None:
                self._release(field, removed)
                target.pop(removed, None)
                continue
            if not key:
                raise AdjustmentError(f"plugin {plugin} sets a {field} with an empty key")
            self._claim(plugin, field, key)
            target[key] = value

    def _mounts(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        mounts: list[dict[str, Any]] = self.spec.setdefault("mounts", [])
        for mount in adjust.mounts:
            removed = _removed(mount.destination)
            destination = mount.destination if removed is None else removed
            if not PurePosixPath(destination).is_absolute() or ".." in PurePosixPath(destination).parts:
                raise AdjustmentError(f"plugin {plugin}: mount destination {mount.destination!r} is not absolute")
            mounts[:] = [m for m in mounts if m.get("destination") != destination]
            if removed is not None:
                self._release("mount", destination)
                continue
            self._claim(plugin, "mount", destination)
            added: dict[str, Any] = {"destination": destination, "type": mount.type or "bind", "source": mount.source}
            if mount.options:
                added["options"] = list(mount.options)
            mounts.append(added)
        sort_mounts(mounts)

    def _env(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        env: list[str] = self._process().setdefault("env", [])
        for pair in adjust.env:
            removed = _removed(pair.key)
            key = pair.key if removed is None else removed
            if not key or "=" in key:
                raise AdjustmentError(f"plugin {plugin}: bad environment variable name {pair.key!r}")
            if removed is not None:
                remove_env(env, key)
                self._release("env", key)
                continue
            self._claim(plugin, "env", key)
            set_env(env, f"{key}={pair.value}")

    def _hooks(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        for field, oci_kind in _HOOK_FIELDS:
            for hook in getattr(adjust.hooks, field):
                if not PurePosixPath(hook.path).is_absolute():
                    raise AdjustmentError(f"OCI hook path {hook.path!r} is not absolute")
                timeout = hook.timeout.value if hook.HasField("timeout") else None
                entry = oci_hook(hook.path, hook.args, hook.env, timeout)
                self.spec.setdefault("hooks", {}).setdefault(oci_kind, []).append(entry)
                if plugin not in self._hook_owners:
                    self._hook_owners.append(plugin)

    def _rlimits(self, plugin: str, adjust: nri.ContainerAdjustment) -> None:
        for limit in adjust.rlimits:
            if not _RLIMIT.fullmatch(limit.type) or limit.soft > limit.hard:
                raise AdjustmentError(f"plugin {plugin}: bad rlimit {limit.type} soft {limit.soft} hard {limit.hard}")
            self._claim(plugin, "rlimit", limit.type)
            rlimits: list[dict[str, Any]] = self._process().setdefault("rlimits", [])
            rlimits[:] = [r for r in rlimits if r.get("type") != limit.type]
            rlimits.append({"type": limit.type, "hard": limit.hard, "soft": limit.soft})

    def _devices(self, plugin: str, linux: nri.LinuxContainerAdjustment) -> None:
        for device in linux.devices:
            removed = _removed(device.path)
            path = device.path if removed is None else removed
            if removed is not None:
                remove_device_node(self._linux(), path)
                self._release("device", path)
                continue
            if not PurePosixPath(path).is_absolute() or device.type not in ("c", "b", "u", "p"):
                raise AdjustmentError(f"plugin {plugin}: bad device {path!r} of type {device.type!r}")
            self._claim(plugin, "device", path)
            entry: dict[str, Any] = {"path": path, "type": device.type, "major": device.major, "minor": device.minor}
            for oci_name, name in (("fileMode", "file_mode"), ("uid", "uid"), ("gid", "gid")):
                if device.HasField(name):
                    entry[oci_name] = getattr(device, name).value
            add_device_node(self._linux(), entry, "rwm")

    def apply_resources(self, plugin: str, resources: nri.LinuxResources) -> None:
        target: dict[str, Any] = self._linux().setdefault("resources", {})
        for section, fields, source in (
            ("memory", _MEMORY_FIELDS, resources.memory),
            ("cpu", _CPU_FIELDS, resources.cpu),
        ):
            for name, oci_name in fields:
                if source.HasField(name):
                    self._claim(plugin, f"{section}.{oci_name}", "")
                    target.setdefault(section, {})[oci_name] = getattr(source, name).value
        for name in ("cpus", "mems"):
            if value := getattr(resources.cpu, name):
                self._claim(plugin, f"cpu.{name}", "")
                target.setdefault("cpu", {})[name] = value
        if resources.HasField("pids"):
            self._claim(plugin, "pids.limit", "")
            target["pids"] = {"limit": resources.pids.limit}
        for hugepage in resources.hugepage_limits:
            self._claim(plugin, "hugepage limit", hugepage.page_size)
            limits: list[dict[str, Any]] = target.setdefault("hugepageLimits", [])
            limits[:] = [h for h in limits if h.get("pageSize") != hugepage.page_size]
            limits.append({"pageSize": hugepage.page_size, "limit": hugepage.limit})
        if resources.unified:
            self._merge_map(plugin, "unified", target.setdefault("unified", {}), resources.unified)

    def _cgroups_path(self, plugin: str, path: str) -> None:
        parts = PurePosixPath(path).parts
        if ".." in parts or not (path.startswith("/") or path.count(":") == 2):
            raise AdjustmentError(f"plugin {plugin}: cgroups path {path!r} is neither absolute nor slice:prefix:name")
        self._claim(plugin, "cgroups path", "")
        self._linux()["cgroupsPath"] = path

    def _oom_score_adj(self, plugin: str, value: int) -> None:
        if not self._min_oom_score_adj <= value <= 1000:
            raise AdjustmentError(
                f"plugin {plugin}: oom_score_adj {value} is outside {self._min_oom_score_adj}..1000"
                " (pycri cannot set one below its own)"
            )
        self._claim(plugin, "oom_score_adj", "")
        self._process()["oomScoreAdj"] = value

    def _sysctl(self, plugin: str, linux: nri.LinuxContainerAdjustment) -> None:
        if linux.sysctl:
            self._merge_map(plugin, "sysctl", self._linux().setdefault("sysctl", {}), linux.sysctl)

    def _namespaces(self, plugin: str, linux: nri.LinuxContainerAdjustment) -> None:
        for namespace in linux.namespaces:
            removed = _removed(namespace.type)
            kind = namespace.type if removed is None else removed
            if self._own_user_namespace and kind in _USERNS_OWNED:
                raise UserNamespaceConflict(
                    f"plugin {plugin} adjusts linux.namespaces {kind!r} of a pod with its own user namespace,"
                    f" which owns the pod's {', '.join(_USERNS_OWNED)} namespaces"
                )
            namespaces: list[dict[str, Any]] = self._linux().setdefault("namespaces", [])
            namespaces[:] = [n for n in namespaces if n.get("type") != kind]
            if removed is not None:
                self._release("namespace", kind)
                continue
            self._claim(plugin, "namespace", kind)
            entry = {"type": kind, "path": namespace.path} if namespace.path else {"type": kind}
            namespaces.append(entry)

    @property
    def cgroups_path(self) -> str | None:
        """The cgroups path a plugin set, if one did."""
        if ("cgroups path", "") in self._owners:
            return str(self._linux()["cgroupsPath"])
        return None

    def owners(self) -> nri.FieldOwners:
        """Which plugin set what, as NRI tells validator plugins."""
        owners = nri.FieldOwners()
        for (field, key), plugin in self._owners.items():
            if field in _SIMPLE_FIELDS:
                owners.simple[_SIMPLE_FIELDS[field]] = plugin
            elif field in _COMPOUND_FIELDS:
                owners.compound[_COMPOUND_FIELDS[field]].owners[key] = plugin
        if self._hook_owners:
            owners.simple[nri.OciHooks] = ",".join(self._hook_owners)
        return owners
