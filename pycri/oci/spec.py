"""OCI runtime specs (config.json, runtime-spec 1.0.2) for CRI containers and for a pod's pause process.

Pure translation, as containerd's CRI plugin does it: CRI config + image config + what the
sandbox service prepared in, a dict for runc out. Host facts (cgroup mode, AppArmor, pycri's own
capabilities) come from `HostFacts`, probed once unless a caller passes its own.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.errors import InvalidArgument
from pycri.oci.spec_errors import SpecError
from pycri.oci.spec_host import HostFacts, probe_host
from pycri.oci.spec_mounts import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    container_mounts,
    masked_and_readonly_paths,
    missing_bind_sources,
    system_mounts,
)
from pycri.oci.spec_resources import device_cgroup_rules, host_devices, linux_resources, requested_devices
from pycri.oci.spec_security import apparmor_profile, capabilities_spec, container_capabilities, seccomp_spec
from pycri.oci.users import MAX_ID, resolve_user, stat_in_rootfs
from pycri.userns.mappings import UserNamespaceMappings, check_container_matches_pod, user_namespace

__all__ = [
    "ContainerSpecInput",
    "PauseSpecInput",
    "SandboxPaths",
    "SpecError",
    "container_spec",
    "linux_resources",
    "missing_bind_sources",
    "pause_spec",
    "resolve_user",
]

OCI_VERSION = "1.0.2"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_OOM_SCORE_ADJ = -998  # kubelet's value for pod infrastructure, raised to pycri's own if lower
PAUSE_CPU_SHARES = 2
_CONTEXT = "linux.security_context"
_CRI_ANNOTATION = "io.kubernetes.cri."


@dataclass
class SandboxPaths:
    """What the sandbox service prepared for the pod.

    A None namespace path means the host's namespace. `shm` is bound at /dev/shm as given: for a
    host-IPC pod the sandbox service passes the host's /dev/shm, as containerd does. A pod in a
    user namespace of its own has it pinned at `userns`, with `user_mappings`.
    """

    netns: Path | None
    ipc: Path | None
    uts: Path | None
    pid: Path | None  # the pause process's /proc/<pid>/ns/pid when the pod shares a PID namespace
    hostname: Path
    hosts: Path
    resolv_conf: Path
    shm: Path
    userns: Path | None = None
    user_mappings: UserNamespaceMappings | None = None


@dataclass
class ContainerSpecInput:
    container_id: str
    sandbox_id: str
    config: api_pb2.ContainerConfig
    sandbox: api_pb2.PodSandboxConfig
    image_config: dict[str, Any]  # the whole OCI image config JSON; its "config" section is read
    rootfs: Path  # the mounted rootfs: users and groups are resolved in it
    sandbox_paths: SandboxPaths
    cgroups_path: str
    runtime_oom_score_adj: int  # pycri's own; the spec never asks for less
    seccomp_profile_root: Path | None  # where relative Localhost seccomp profiles are looked up
    target_pid_namespace: Path | None = None  # /proc/<pid>/ns/pid of the target of NamespaceMode TARGET
    host: HostFacts | None = None  # None: this host
    # Keys (shell-style patterns) of the container's annotations the runtime may see.
    allowed_annotations: tuple[str, ...] = ()


@dataclass
class PauseSpecInput:
    sandbox_id: str
    sandbox: api_pb2.PodSandboxConfig
    image_config: dict[str, Any]
    rootfs: Path
    sandbox_paths: SandboxPaths  # the pod's net/ipc/uts namespaces to join; pid is ignored (pause makes it)
    cgroups_path: str
    runtime_oom_score_adj: int
    seccomp_profile_root: Path | None
    host: HostFacts | None = None
    # Keys (shell-style patterns) of the pod's annotations the runtime may see.
    allowed_annotations: tuple[str, ...] = ()


def _image_section(image_config: dict[str, Any]) -> dict[str, Any]:
    section = image_config.get("config") or {}
    if not isinstance(section, dict):
        raise SpecError("image config: its config section is not an object")
    return section


def _process_args(config: api_pb2.ContainerConfig, image: dict[str, Any]) -> list[str]:
    """CRI command replaces the entrypoint and args replace Cmd; a command without args drops Cmd."""
    command, args = list(config.command), list(config.args)
    if not command:
        entrypoint = list(image.get("Entrypoint") or [])
        command = [] if entrypoint == [""] else entrypoint
        args = args or list(image.get("Cmd") or [])
    if not command and not args:
        raise SpecError("command: no command given and the image has no Entrypoint or Cmd")
    return command + args


def _image_env(image: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in image.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return env


def _env_list(env: dict[str, str]) -> list[str]:
    lines = [f"{key}={value}" for key, value in env.items()]
    return lines if "PATH" in env else [*lines, DEFAULT_PATH_ENV]


def _process_env(config: api_pb2.ContainerConfig, image: dict[str, Any], hostname: str) -> list[str]:
    """HOSTNAME, then the image's Env, then the CRI envs; a later value replaces an earlier one in place."""
    env = {"HOSTNAME": hostname or socket.gethostname(), **_image_env(image)}
    for number, variable in enumerate(config.envs):
        if not variable.key or "=" in variable.key:
            raise SpecError(f"envs[{number}].key: {variable.key!r} is not a variable name")
        try:
            env[variable.key] = variable.value.decode()
        except UnicodeDecodeError as err:
            raise SpecError(f"envs[{number}].value: not UTF-8") from err
    return _env_list(env)


def _working_dir(config: api_pb2.ContainerConfig, image: dict[str, Any], rootfs: Path) -> str:
    if config.working_dir:
        cwd, field = config.working_dir, "working_dir"
    elif image.get("WorkingDir"):
        cwd, field = str(image["WorkingDir"]), "image config WorkingDir"
    else:
        return "/"
    if not cwd.startswith("/"):
        raise SpecError(f"{field}: {cwd!r} is not absolute")
    try:
        info = stat_in_rootfs(rootfs, cwd)
    except OSError as err:
        raise SpecError(f"{field}: {cwd!r}: {err.strerror}") from err
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise SpecError(f"{field}: {cwd!r} is not a directory in the image")
    return cwd


def _checked_id(value: int, field: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise SpecError(f"{field}: {value} is out of range")
    return value


def _process_user(
    rootfs: Path,
    image: dict[str, Any],
    context: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    username: str,
) -> dict[str, Any]:
    """The security context's user (name or uid, plus group) over the image's User, resolved in the rootfs."""
    if username:
        user, field = username, f"{_CONTEXT}.run_as_username"
    elif context.HasField("run_as_user"):
        user = str(_checked_id(context.run_as_user.value, f"{_CONTEXT}.run_as_user"))
        field = f"{_CONTEXT}.run_as_user"
    elif context.HasField("run_as_group"):
        raise SpecError(f"{_CONTEXT}.run_as_group: set without run_as_user or run_as_username")
    else:
        user, field = str(image.get("User") or ""), "image config User"
    if context.HasField("run_as_group"):
        group = _checked_id(context.run_as_group.value, f"{_CONTEXT}.run_as_group")
        user = f"{user.partition(':')[0]}:{group}"
    try:
        resolved = resolve_user(rootfs, user)
    except SpecError as err:
        raise SpecError(f"{field}: {err}") from err

    extra = [_checked_id(gid, f"{_CONTEXT}.supplemental_groups") for gid in context.supplemental_groups]
    policy = context.supplemental_groups_policy
    if policy == api_pb2.Merge:
        gids = [resolved.gid, *resolved.additional_gids, *extra]
    elif policy == api_pb2.Strict:
        gids = [resolved.gid, *extra]
    else:
        raise SpecError(f"{_CONTEXT}.supplemental_groups_policy: unknown value {policy}")
    return {"uid": resolved.uid, "gid": resolved.gid, "additionalGids": list(dict.fromkeys(gids))}


def _pid_namespace(inp: ContainerSpecInput) -> dict[str, str] | None:
    """The container's PID namespace entry; None means the host's."""
    mode = inp.config.linux.security_context.namespace_options.pid
    field = f"{_CONTEXT}.namespace_options.pid"
    if mode == api_pb2.NODE:
        return None
    if mode == api_pb2.CONTAINER:
        return {"type": "pid"}
    if mode == api_pb2.TARGET:
        if inp.target_pid_namespace is None:
            raise SpecError(f"{field}: TARGET needs the target container's PID namespace")
        return {"type": "pid", "path": str(inp.target_pid_namespace)}
    if mode != api_pb2.POD:
        raise SpecError(f"{field}: unknown value {mode}")
    if inp.sandbox_paths.pid is not None:
        return {"type": "pid", "path": str(inp.sandbox_paths.pid)}
    # No pod PID namespace was made: the sandbox shares none, so follow the sandbox's own choice.
    if inp.sandbox.linux.security_context.namespace_options.pid == api_pb2.NODE:
        return None
    return {"type": "pid"}


def _namespaces(paths: SandboxPaths, pid: dict[str, str] | None, cgroup_namespace: bool) -> list[dict[str, str]]:
    namespaces = [{"type": "mount"}]
    if paths.userns is not None:
        namespaces.append({"type": "user", "path": str(paths.userns)})
    if pid is not None:
        namespaces.append(pid)
    for kind, path in (("network", paths.netns), ("ipc", paths.ipc), ("uts", paths.uts)):
        if path is not None:
            namespaces.append({"type": kind, "path": str(path)})
    if cgroup_namespace:
        namespaces.append({"type": "cgroup"})
    return namespaces


def _id_mappings(paths: SandboxPaths) -> dict[str, Any]:
    """linux.uidMappings and gidMappings for a pod in a user namespace: runc 1.1 wants them
    even when it joins the namespace by path."""
    return paths.user_mappings.oci() if paths.user_mappings is not None else {}


def _check_supported(config: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig) -> None:
    context = config.linux.security_context
    if context.privileged and not sandbox.linux.security_context.privileged:
        raise SpecError(f"{_CONTEXT}.privileged: no privileged container is allowed in a non-privileged sandbox")
    field = f"{_CONTEXT}.namespace_options"
    try:
        pod = user_namespace(sandbox.linux.security_context.namespace_options, f"sandbox.{field}")
        check_container_matches_pod(user_namespace(context.namespace_options, field), pod, f"{field}.userns_options")
    except InvalidArgument as exc:
        raise SpecError(str(exc)) from None


def allowed(annotations: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The annotations the runtime handler's config lets through to the OCI spec: a runtime
    may act on keys such as run.oci.*, so users' annotations reach it only when allowed."""
    return {key: value for key, value in annotations.items() if any(fnmatchcase(key, p) for p in patterns)}


def _sandbox_annotations(sandbox_id: str, sandbox: api_pb2.PodSandboxConfig) -> dict[str, str]:
    return {
        f"{_CRI_ANNOTATION}sandbox-id": sandbox_id,
        f"{_CRI_ANNOTATION}sandbox-name": sandbox.metadata.name,
        f"{_CRI_ANNOTATION}sandbox-namespace": sandbox.metadata.namespace,
        f"{_CRI_ANNOTATION}sandbox-uid": sandbox.metadata.uid,
    }


def container_spec(inp: ContainerSpecInput) -> dict[str, Any]:
    """The config.json dict of a container. Raises SpecError naming the CRI field at fault.

    Bind sources must exist: create `missing_bind_sources(config)` first, as containerd does.
    CDI devices (CDI_devices, cdi.k8s.io/ annotations) are not here: the container service
    injects them into the result (pycri.cdi).
    """
    host = inp.host or probe_host()
    config = inp.config
    context = config.linux.security_context
    privileged = context.privileged
    _check_supported(config, inp.sandbox)
    image = _image_section(inp.image_config)

    capabilities = container_capabilities(
        context.capabilities, privileged, host.capabilities, f"{_CONTEXT}.capabilities"
    )
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": _process_user(inp.rootfs, image, context, context.run_as_username),
        "args": _process_args(config, image),
        "env": _process_env(config, image, inp.sandbox.hostname),
        "cwd": _working_dir(config, image, inp.rootfs),
        "capabilities": capabilities,
        "noNewPrivileges": context.no_new_privs,
        "oomScoreAdj": max(config.linux.resources.oom_score_adj, inp.runtime_oom_score_adj),
    }
    apparmor = apparmor_profile(context, context.apparmor_profile, host, _CONTEXT)
    if apparmor is not None:
        process["apparmorProfile"] = apparmor

    mounts, rootfs_propagation = container_mounts(
        config.mounts,
        inp.sandbox_paths,
        privileged=privileged,
        readonly_rootfs=context.readonly_rootfs,
        mountinfo=host.mountinfo,
    )
    masked, readonly = masked_and_readonly_paths(context)
    devices, device_rules = requested_devices(list(config.devices))
    if privileged:
        requested_paths = {device["path"] for device in devices}
        devices = [node for node in host_devices(host.dev_dir) if node["path"] not in requested_paths] + devices
    resources = linux_resources(config.linux.resources, host)
    resources["devices"] = device_cgroup_rules(privileged) + device_rules

    linux: dict[str, Any] = {
        "cgroupsPath": inp.cgroups_path,
        "resources": resources,
        "namespaces": _namespaces(inp.sandbox_paths, _pid_namespace(inp), host.cgroup_unified and not privileged),
        **_id_mappings(inp.sandbox_paths),
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    if devices:
        linux["devices"] = devices
    if rootfs_propagation is not None:
        linux["rootfsPropagation"] = rootfs_propagation
    profile = seccomp_spec(context, capabilities["bounding"], inp.seccomp_profile_root, host, _CONTEXT)
    if profile is not None:
        linux["seccomp"] = profile

    annotations = allowed(config.annotations, inp.allowed_annotations)
    annotations.update(_sandbox_annotations(inp.sandbox_id, inp.sandbox))
    annotations.update(
        {
            f"{_CRI_ANNOTATION}container-type": "container",
            f"{_CRI_ANNOTATION}container-name": config.metadata.name,
            f"{_CRI_ANNOTATION}image-name": config.image.image,
        }
    )
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(inp.rootfs), "readonly": context.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }
    if inp.sandbox_paths.uts is not None and inp.sandbox.hostname:
        spec["hostname"] = inp.sandbox.hostname
    return spec


def pause_spec(inp: PauseSpecInput) -> dict[str, Any]:
    """The config.json dict of a pod's pause process: PID 1 of the pod's shared PID namespace.

    It joins the pod's net/ipc/uts namespaces, makes a new PID namespace, runs the image's
    entrypoint as the sandbox's (or image's) user with no capabilities, no new privileges and a
    read-only rootfs.
    """
    host = inp.host or probe_host()
    context = inp.sandbox.linux.security_context
    image = _image_section(inp.image_config)
    args = list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])
    if not args:
        raise SpecError("image config: the pause image has no Entrypoint or Cmd")
    capabilities = capabilities_spec([])
    process: dict[str, Any] = {
        "terminal": False,
        "user": _process_user(inp.rootfs, image, context, ""),
        "args": args,
        "env": _env_list(_image_env(image)),
        "cwd": "/",
        "capabilities": capabilities,
        "noNewPrivileges": True,
        "oomScoreAdj": max(PAUSE_OOM_SCORE_ADJ, inp.runtime_oom_score_adj),
    }
    apparmor = apparmor_profile(context, "", host, _CONTEXT)
    if apparmor is not None:
        process["apparmorProfile"] = apparmor
    linux: dict[str, Any] = {
        "cgroupsPath": inp.cgroups_path,
        "resources": {"cpu": {"shares": PAUSE_CPU_SHARES}, "devices": device_cgroup_rules(False)},
        "namespaces": _namespaces(inp.sandbox_paths, {"type": "pid"}, host.cgroup_unified),
        **_id_mappings(inp.sandbox_paths),
        "maskedPaths": list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS),
    }
    profile = seccomp_spec(context, [], inp.seccomp_profile_root, host, _CONTEXT)
    if profile is not None:
        linux["seccomp"] = profile
    annotations = allowed(inp.sandbox.annotations, inp.allowed_annotations)
    annotations.update(_sandbox_annotations(inp.sandbox_id, inp.sandbox))
    annotations.update(
        {
            f"{_CRI_ANNOTATION}container-type": "sandbox",
            f"{_CRI_ANNOTATION}sandbox-log-directory": inp.sandbox.log_directory,
        }
    )
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(inp.rootfs), "readonly": True},
        "mounts": system_mounts(privileged=False),
        "annotations": annotations,
        "linux": linux,
    }
    if inp.sandbox_paths.uts is not None and inp.sandbox.hostname:
        spec["hostname"] = inp.sandbox.hostname
    return spec
