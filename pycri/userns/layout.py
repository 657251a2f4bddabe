"""Where the layers of containers and pause processes in pod user namespaces live, and who may
walk there.

runc's init, already inside the pod's user namespace, mounts the rootfs by its path, so the
pod's root (a host ID of its own, not root) must be able to search every directory from / down
to it. Those layers live in <root>/userns/containers/<id> and <root>/userns/sandboxes/<id>
instead of beside the others:

- the root dir and <root>/userns, <root>/userns/containers and <root>/userns/sandboxes are
  search-only for others (0711: nothing in them can be listed), set once at start where pods
  may get user namespaces (open_for_pod_roots);
- each <id> dir is searchable by the group of its pod's root only (0710, owned by root), and
  its upper dir belongs to the pod's root (hand_to_pod_root).

Everything else under the root dir (the database, content, snapshots, the other containers'
and pods' dirs) and the whole state dir stay root's alone (0700). runc opens bind mount
sources, namespace pins and its exec fifo on the host's side, so none of those need a path
the pod's root can walk.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pycri.errors import FailedPrecondition
from pycri.userns.mappings import UserNamespaceMappings

USERNS_DIR = "userns"
# The per-object dirs below <root>/userns, named as under the root dir itself.
OBJECT_DIRS = ("containers", "sandboxes")
SEARCH_ONLY_MODE = 0o711
POD_ROOT_SEARCH_MODE = 0o710


def userns_base(root_dir: Path) -> Path:
    return root_dir / USERNS_DIR


def container_layers(root_dir: Path, container_id: str) -> Path:
    """The layer dir of a container in its pod's user namespace."""
    return userns_base(root_dir) / "containers" / container_id


def pause_layers(root_dir: Path, sandbox_id: str) -> Path:
    """The rootfs, upper and work dirs of the pause process of a pod with a user namespace."""
    return userns_base(root_dir) / "sandboxes" / sandbox_id


def open_for_pod_roots(root_dir: Path) -> None:
    """Make the root dir and the user-namespace subtree search-only for others (made when
    missing). Called once at start, where pods may get user namespaces."""
    base = userns_base(root_dir)
    for directory in (base, *(base / name for name in OBJECT_DIRS)):
        directory.mkdir(mode=0o700, exist_ok=True)
    for directory in (root_dir, base, *(base / name for name in OBJECT_DIRS)):
        directory.chmod(SEARCH_ONLY_MODE)


def hand_to_pod_root(mappings: UserNamespaceMappings, layers: Path) -> None:
    """Let the pod's root walk to `layers` (a container's or pause process's layer dir under the
    user-namespace subtree) and own its upper dir. FAILED_PRECONDITION naming every directory
    above it that others may not search (the host's, or pycri's narrowed since start)."""
    blocked = [str(parent) for parent in reversed(layers.parents) if not parent.stat().st_mode & stat.S_IXOTH]
    if blocked:
        raise FailedPrecondition(
            f"a pod in a user namespace needs {', '.join(blocked)} searchable by others (o+x): "
            "its root reaches the container's rootfs by path"
        )
    os.chown(layers, -1, mappings.root_gid)
    layers.chmod(POD_ROOT_SEARCH_MODE)
    upper = layers / "upper"
    if upper.is_dir():
        os.chown(upper, mappings.root_uid, mappings.root_gid)
