"""The cgroupfs driver: a cgroupsPath is a path below the hierarchy roots ("/pycri/pod-<id>/<leaf>")
that runc creates itself; pycri only makes conmon's leaf and removes what it made."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pycri.cgroups import tree
from pycri.cgroups.layout import CgroupLayout

CONMON_IN_POD = "pod"
# Container and sandbox ids, "conmon-<id>", "pod-<id>": also valid in systemd unit names.
_LEAF = re.compile(r"[A-Za-z0-9_.-]+")


def cgroupfs_directory(cgroups_path: str) -> PurePosixPath:
    """The directory of an absolute cgroupfs path below the hierarchy roots; ValueError for one
    that is relative, is the root itself or climbs with '..'."""
    # Leading slashes collapse into one, as for the kernel and runc ("//" is a root of its own to pathlib).
    path = PurePosixPath("/", cgroups_path.lstrip("/"))
    if not cgroups_path.startswith("/") or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(f"{cgroups_path!r} is not an absolute cgroup path below the root without '..'")
    return path.relative_to("/")


def check_leaf(leaf: str) -> None:
    if not _LEAF.fullmatch(leaf) or leaf in (".", ".."):
        raise ValueError(f"{leaf!r} is not a cgroup leaf name")


class CgroupfsManager(tree.DirectoryOperations):
    driver = "cgroupfs"

    def __init__(self, parent: str, conmon_cgroup: str, layout: CgroupLayout) -> None:
        self.layout = layout
        self._parent = cgroupfs_directory(parent)
        self.parent = f"/{self._parent}"
        if conmon_cgroup != CONMON_IN_POD:
            conmon = cgroupfs_directory(conmon_cgroup)
            if conmon == self._parent or conmon in self._parent.parents:
                # cgroup v2 takes no process in a cgroup whose children use controllers.
                raise ValueError(f"conmon cgroup {conmon_cgroup!r} holds the pods' cgroups: give it a leaf")
        self._conmon_cgroup = conmon_cgroup

    def check_parent(self, parent: str) -> None:
        cgroupfs_directory(parent)

    def pod_parent(self, kubelet_parent: str, sandbox_id: str) -> str:
        if kubelet_parent:
            return kubelet_parent
        check_leaf(sandbox_id)
        return f"/{self._parent / f'pod-{sandbox_id}'}"

    def owns_pod_parent(self, parent: str) -> bool:
        try:
            directory = cgroupfs_directory(parent)
        except ValueError:
            return False
        return directory.parent == self._parent and directory.name.startswith("pod-")

    def container_path(self, parent: str, leaf: str) -> str:
        check_leaf(leaf)
        return f"/{cgroupfs_directory(parent) / leaf}"

    def directory(self, cgroups_path: str) -> PurePosixPath:
        return cgroupfs_directory(cgroups_path)

    def create_pod_parent(self, parent: str) -> None:
        """Nothing to do: runc makes the directories along a container's cgroupsPath."""

    def place_conmon(self, parent: str, container_id: str, pid: int) -> None:
        if self._conmon_cgroup == CONMON_IN_POD:
            target = self.container_path(parent, f"conmon-{container_id}")
        else:
            target = self._conmon_cgroup
        tree.join(self.layout, self.directory(target), pid)

    async def remove(self, cgroups_path: str) -> None:
        await tree.remove(self.layout, self.directory(cgroups_path))

    def children(self, parent: str) -> list[str]:
        return tree.subdirectories(self.layout, self.directory(parent))
