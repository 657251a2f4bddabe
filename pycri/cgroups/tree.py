"""Operations on one cgroup's directories across every mounted hierarchy, shared by both drivers."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path, PurePosixPath

from pycri.cgroups.details import CgroupDetails, read_details_at
from pycri.cgroups.layout import CgroupLayout
from pycri.cgroups.limits import CgroupLimits, write_limits
from pycri.cgroups.usage import CgroupStats, read_optional, read_stats_at

REMOVE_ATTEMPTS = 6
CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")


def exists(layout: CgroupLayout, directory: PurePosixPath) -> bool:
    return any(path.is_dir() for path in layout.hierarchy_dirs(directory))


def make(layout: CgroupLayout, directory: PurePosixPath) -> None:
    """Create the cgroup where missing, in every hierarchy: a new v1 cpuset level gets its parent's
    cpus and mems, and on a v2 host each level above it enables the controllers it has for the
    levels below, as runc does for a container's cgroup."""
    cpuset = layout.v1.get("cpuset")
    for mount in layout.hierarchy_mounts():
        if mount == cpuset:
            _make_cpuset(mount, directory)
        elif mount == layout.unified:
            _make_with_controllers(mount, directory)
        else:
            (mount / directory).mkdir(parents=True, exist_ok=True)


def join(layout: CgroupLayout, directory: PurePosixPath, pid: int) -> None:
    """Create the cgroup where missing and move a process into it, in every hierarchy. The
    caller picks a leaf: cgroup v2 refuses a process in a cgroup whose children use controllers."""
    make(layout, directory)
    for mount in layout.hierarchy_mounts():
        (mount / directory / "cgroup.procs").write_text(str(pid))


def _make_cpuset(mount: Path, directory: PurePosixPath) -> None:
    """A new v1 cpuset takes no task until it has cpus and mems: give each level made here its parent's."""
    parent = mount
    for part in directory.parts:
        child = parent / part
        child.mkdir(exist_ok=True)
        for name in CPUSET_FILES:
            inherited = read_optional(parent / name).strip()
            if inherited and not read_optional(child / name).strip():
                (child / name).write_text(inherited)
        parent = child


def _make_with_controllers(mount: Path, directory: PurePosixPath) -> None:
    parent = mount
    for part in directory.parts:
        enabled = read_optional(parent / "cgroup.subtree_control").split()
        missing = [name for name in read_optional(parent / "cgroup.controllers").split() if name not in enabled]
        if missing:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{name}" for name in missing))
        parent = parent / part
        parent.mkdir(exist_ok=True)


def has_processes(layout: CgroupLayout, directory: PurePosixPath) -> bool:
    """Whether any process is in the cgroup or below it, in any hierarchy."""
    for top in layout.hierarchy_dirs(directory):
        for parent, _, _ in os.walk(top):
            if read_optional(Path(parent) / "cgroup.procs").strip():
                return True
    return False


def subdirectories(layout: CgroupLayout, directory: PurePosixPath) -> list[str]:
    """Names of the cgroups directly below this one, in any hierarchy."""
    names: set[str] = set()
    for path in layout.hierarchy_dirs(directory):
        try:
            names.update(entry.name for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
    return sorted(names)


async def remove(layout: CgroupLayout, directory: PurePosixPath) -> None:
    """Remove the cgroup and the cgroups below it in every hierarchy. No error when it is
    already gone; OSError (EBUSY) when processes are still inside."""
    for top in layout.hierarchy_dirs(directory):
        if not top.is_dir():
            continue
        for parent, _, _ in os.walk(top, topdown=False):
            await _rmdir_retrying(Path(parent))


async def _rmdir_retrying(directory: Path) -> None:
    # A cgroup whose last task just exited can report EBUSY for a moment.
    for attempt in range(REMOVE_ATTEMPTS):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or attempt == REMOVE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * 2**attempt)


class DirectoryOperations:
    """What both drivers do the same way once a cgroups path is a directory."""

    layout: CgroupLayout

    def directory(self, cgroups_path: str) -> PurePosixPath:
        raise NotImplementedError

    def exists(self, cgroups_path: str) -> bool:
        return exists(self.layout, self.directory(cgroups_path))

    def read_stats(self, cgroups_path: str) -> CgroupStats:
        return read_stats_at(self.layout, self.directory(cgroups_path))

    def read_details(self, cgroups_path: str) -> CgroupDetails:
        return read_details_at(self.layout, self.directory(cgroups_path))

    def set_limits(self, cgroups_path: str, limits: CgroupLimits) -> list[str]:
        directory = self.directory(cgroups_path)
        make(self.layout, directory)
        return write_limits(self.layout, directory, limits)
