"""The ID mappings of a pod's user namespace, as kubelet sends them, checked.

pycri accepts what kubelet's scheme produces and containerd and CRI-O accept: mode POD
with exactly one UID and one GID mapping, each starting at container ID 0 (the container's
root is mapped) with a length of at least one whose host range stays inside the 32-bit ID
space; or mode NODE (the host's user namespace) with no mapping. Anything else is
INVALID_ARGUMENT naming the field, before anything is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycri.api import api_pb2
from pycri.errors import InvalidArgument

# IDs are 32 bits and (u32)-1 is no ID: a mapped range must end below 2**32 - 1.
ID_SPACE_END = (1 << 32) - 1
_MODES = api_pb2.NamespaceMode


@dataclass(frozen=True)
class IdRange:
    """`length` IDs from `container_id` inside, `host_id` outside."""

    container_id: int
    host_id: int
    length: int

    def oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.length}

    def proc_line(self) -> str:
        """The line /proc/<pid>/uid_map and gid_map take."""
        return f"{self.container_id} {self.host_id} {self.length}\n"


@dataclass(frozen=True)
class UserNamespaceMappings:
    uids: IdRange
    gids: IdRange

    @property
    def root_uid(self) -> int:
        """The host UID of the container's root."""
        return self.uids.host_id

    @property
    def root_gid(self) -> int:
        return self.gids.host_id

    def oci(self) -> dict[str, Any]:
        """The linux.uidMappings and gidMappings of an OCI spec."""
        return {"uidMappings": [self.uids.oci()], "gidMappings": [self.gids.oci()]}


def id_range(mappings: Sequence[api_pb2.IDMapping], field: str) -> IdRange:
    """The one mapping of a POD user namespace; InvalidArgument naming what is wrong."""
    if len(mappings) != 1:
        raise InvalidArgument(f"{field}: exactly one mapping is supported, got {len(mappings)}")
    mapping = mappings[0]
    if mapping.container_id != 0:
        raise InvalidArgument(
            f"{field}[0].container_id: {mapping.container_id}: the mapping must start at container ID 0"
        )
    if mapping.length == 0:
        raise InvalidArgument(f"{field}[0].length: a mapping maps at least one ID")
    if mapping.host_id + mapping.length > ID_SPACE_END:
        raise InvalidArgument(
            f"{field}[0]: host IDs {mapping.host_id} + {mapping.length} run past the ID space ({ID_SPACE_END - 1})"
        )
    return IdRange(mapping.container_id, mapping.host_id, mapping.length)


def user_namespace(options: api_pb2.NamespaceOption, field: str) -> UserNamespaceMappings | None:
    """The user namespace `options` asks for: its mappings, or None for the host's.
    `field` names `options` in errors."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    field = f"{field}.userns_options"
    if userns.mode == _MODES.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{field}: mode NODE (the host's user namespace) takes no uids or gids")
        return None
    if userns.mode != _MODES.POD:
        name = _MODES.Name(userns.mode) if userns.mode in _MODES.values() else str(userns.mode)
        raise InvalidArgument(f"{field}.mode: {name} is not supported for a user namespace (POD or NODE)")
    return UserNamespaceMappings(id_range(userns.uids, f"{field}.uids"), id_range(userns.gids, f"{field}.gids"))


def in_pod_user_namespace(config: api_pb2.ContainerConfig) -> bool:
    """Whether a container, its config checked, runs in its pod's user namespace."""
    options = config.linux.security_context.namespace_options
    return options.HasField("userns_options") and options.userns_options.mode == _MODES.POD


def check_container_matches_pod(
    container: UserNamespaceMappings | None, pod: UserNamespaceMappings | None, field: str
) -> None:
    """A container lives in its pod's user namespace: it must ask for exactly that one."""
    if container == pod:
        return
    if pod is None:
        raise InvalidArgument(f"{field}: the pod sandbox runs in the host's user namespace, not one of its own")
    if container is None:
        raise InvalidArgument(
            f"{field}: the pod sandbox has a user namespace of its own; the container must ask for it"
        )
    raise InvalidArgument(f"{field}: the mappings differ from the pod sandbox's ({pod.uids}, {pod.gids})")


def mount_is_idmapped(mount: api_pb2.Mount, pod: UserNamespaceMappings | None, field: str) -> bool:
    """Whether a CRI mount asks to be ID-mapped. kubelet gives a volume the pod's own mappings;
    pycri makes ID-mapped mounts with the pod's user namespace only, so any other is refused."""
    if not mount.uidMappings and not mount.gidMappings:
        return False
    if pod is None:
        raise InvalidArgument(f"{field}: an ID-mapped mount needs a pod sandbox with a user namespace of its own")
    asked = UserNamespaceMappings(
        id_range(mount.uidMappings, f"{field}.uidMappings"), id_range(mount.gidMappings, f"{field}.gidMappings")
    )
    if asked != pod:
        raise InvalidArgument(f"{field}: an ID-mapped mount takes the pod sandbox's own mappings")
    return True


def check_container(config: api_pb2.ContainerConfig, pod: UserNamespaceMappings | None) -> None:
    """A container's user namespace and ID-mapped mounts fit its pod's; InvalidArgument if not."""
    field = "config.linux.security_context.namespace_options"
    container = user_namespace(config.linux.security_context.namespace_options, field)
    check_container_matches_pod(container, pod, f"{field}.userns_options")
    for number, mount in enumerate(config.mounts):
        mount_is_idmapped(mount, pod, f"config.mounts[{number}]")
