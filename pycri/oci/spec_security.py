"""Capabilities, seccomp and AppArmor choices for a container or pause process."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycri.api import api_pb2
from pycri.oci import seccomp
from pycri.oci.spec_errors import SpecError

if TYPE_CHECKING:
    from pycri.oci.spec_host import HostFacts


# Index in this tuple is the capability's number in the kernel.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_CAPABILITY_NUMBER = {name: number for number, name in enumerate(ALL_CAPABILITIES)}

# The set containerd and Docker give an unprivileged container.
DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    }
)

APPARMOR_DEFAULT_PROFILE = "pycri-default"
_LOCALHOST_PREFIX = "localhost/"


def capability_names_from_mask(mask: int) -> tuple[str, ...]:
    """Names of the known capabilities whose bits are set in a /proc/<pid>/status Cap* mask."""
    return tuple(name for number, name in enumerate(ALL_CAPABILITIES) if mask >> number & 1)


def _normalize_capability(name: str, field: str) -> str:
    upper = name.upper()
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in _CAPABILITY_NUMBER:
        raise SpecError(f"{field}: unknown capability {name}")
    return full


def _ordered(capabilities: Iterable[str]) -> list[str]:
    return sorted(set(capabilities), key=_CAPABILITY_NUMBER.__getitem__)


def capabilities_spec(capabilities: Iterable[str], ambient: Iterable[str] = ()) -> dict[str, list[str]]:
    """process.capabilities; inheritable holds only the ambient ones, which the kernel requires there."""
    ambient_list = _ordered(ambient)
    granted = _ordered([*capabilities, *ambient_list])
    return {
        "bounding": granted,
        "effective": granted,
        "permitted": granted,
        "inheritable": ambient_list,
        "ambient": ambient_list,
    }


def container_capabilities(
    requested: api_pb2.Capability, privileged: bool, runtime_capabilities: Sequence[str], field: str
) -> dict[str, list[str]]:
    """The default set with CRI add/drop applied, "ALL" first so that single names refine it.

    "ALL" and privileged mean every capability pycri itself holds: a process cannot grant more.
    """
    if privileged:
        return capabilities_spec(runtime_capabilities)
    capabilities = set(DEFAULT_CAPABILITIES)
    add = [name for name in requested.add_capabilities if name.upper() != "ALL"]
    drop = [name for name in requested.drop_capabilities if name.upper() != "ALL"]
    if len(add) < len(requested.add_capabilities):
        capabilities = set(runtime_capabilities)
    if len(drop) < len(requested.drop_capabilities):
        capabilities = set()
    capabilities.update(_normalize_capability(name, f"{field}.add_capabilities") for name in add)
    capabilities.difference_update(_normalize_capability(name, f"{field}.drop_capabilities") for name in drop)
    ambient = [
        _normalize_capability(name, f"{field}.add_ambient_capabilities") for name in requested.add_ambient_capabilities
    ]
    return capabilities_spec(capabilities, ambient)


def _profile_from_legacy_string(value: str, field: str) -> api_pb2.SecurityProfile | None:
    """The deprecated "runtime/default" | "docker/default" | "unconfined" | "localhost/<ref>" strings."""
    profile_type = api_pb2.SecurityProfile
    if value == "":
        return None
    if value in ("runtime/default", "docker/default"):
        return profile_type(profile_type=profile_type.RuntimeDefault)
    if value == "unconfined":
        return profile_type(profile_type=profile_type.Unconfined)
    if value.startswith(_LOCALHOST_PREFIX):
        return profile_type(profile_type=profile_type.Localhost, localhost_ref=value[len(_LOCALHOST_PREFIX) :])
    raise SpecError(f"{field}: unknown profile {value!r}")


def _chosen_profile(
    context: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    name: str,
    legacy: str,
    field: str,
) -> api_pb2.SecurityProfile | None:
    if context.HasField(name):
        profile: api_pb2.SecurityProfile = getattr(context, name)
        if profile.profile_type != profile.Localhost and profile.localhost_ref:
            raise SpecError(f"{field}.localhost_ref: only allowed with the Localhost profile type")
        if profile.profile_type == profile.Localhost and not profile.localhost_ref:
            raise SpecError(f"{field}.localhost_ref: required with the Localhost profile type")
        return profile
    return _profile_from_legacy_string(legacy, f"{field}_profile_path" if name == "seccomp" else f"{field}_profile")


def seccomp_spec(
    context: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    capabilities: Sequence[str],
    profile_root: Path | None,
    host: HostFacts,
    field: str,
) -> dict[str, Any] | None:
    """linux.seccomp, or None: privileged and Unconfined run without; no choice at all means Unconfined."""
    profile = _chosen_profile(context, "seccomp", context.seccomp_profile_path, f"{field}.seccomp")
    if context.privileged or profile is None or profile.profile_type == profile.Unconfined:
        return None
    if profile.profile_type == profile.RuntimeDefault:
        return seccomp.default_profile(capabilities, host.machine)
    path = _localhost_profile_path(profile.localhost_ref.removeprefix(_LOCALHOST_PREFIX), profile_root, field)
    try:
        return seccomp.load_profile(path, capabilities, host.machine, host.kernel)
    except seccomp.ProfileError as err:
        raise SpecError(f"{field}.seccomp: {err}") from err


def _localhost_profile_path(ref: str, profile_root: Path | None, field: str) -> Path:
    path = Path(ref)
    if not path.is_absolute():
        if profile_root is None:
            raise SpecError(f"{field}.seccomp.localhost_ref: {ref!r} is relative and no seccomp profile root is set")
        if ".." in path.parts:
            raise SpecError(f"{field}.seccomp.localhost_ref: {ref!r} leaves the seccomp profile root")
        path = profile_root / path
    return path


def apparmor_profile(
    context: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    legacy: str,
    host: HostFacts,
    field: str,
) -> str | None:
    """process.apparmorProfile, or None. Without AppArmor on the host, RuntimeDefault runs
    unconfined by AppArmor (the runtime status says so) and a Localhost profile is refused."""
    profile = _chosen_profile(context, "apparmor", legacy, f"{field}.apparmor")
    if profile is None:
        profile = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    if profile.profile_type == profile.Unconfined:
        return None
    if not host.apparmor_enabled:
        if profile.profile_type == profile.Localhost:
            raise SpecError(f"{field}.apparmor: AppArmor is not enabled on this host")
        return None
    if profile.profile_type == profile.RuntimeDefault:
        if context.privileged:
            return None
        if APPARMOR_DEFAULT_PROFILE not in host.apparmor_profiles:
            raise SpecError(f"{field}.apparmor: the default profile {APPARMOR_DEFAULT_PROFILE} is not loaded")
        return APPARMOR_DEFAULT_PROFILE
    name = profile.localhost_ref.removeprefix(_LOCALHOST_PREFIX)
    if name not in host.apparmor_profiles:
        raise SpecError(f"{field}.apparmor.localhost_ref: AppArmor profile {name!r} is not loaded")
    return name
