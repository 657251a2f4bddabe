"""The mounts of a container (or pause process) in its pod's user namespace, made by pycri.

runc 1.1 joins the pod's user namespace but makes no ID-mapped mount itself, so pycri makes
them and hands runc plain paths:

- the rootfs and image volumes are overlays whose lower layers are ID-mapped clones of the
  snapshot dirs (overlayfs itself takes no ID mapping); the upper dir belongs to the pod's
  root, so files the container writes are owned on disk by the host IDs it runs as;
- the pod's hostname, hosts and resolv.conf files and every CRI mount kubelet asks to be
  ID-mapped are ID-mapped mounts staged under <layers>/idmapped/<n>, which runc binds (a bind
  keeps the mapping) and pycri unmounts once the runtime has made the container.

runc's init, already inside the user namespace, mounts the rootfs by its path, so the pod's
root must be able to walk there: the shared dirs above get search permission for others
(0711, nothing can be listed) and the container's (or pod's) own dirs search permission for
the group of the pod's root only (0710, still owned by root).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from pycri.api import api_pb2
from pycri.errors import FailedPrecondition
from pycri.image import overlay
from pycri.oci.spec import SandboxPaths
from pycri.recovery.mounts import mounts_at_or_below
from pycri.userns.mappings import IdRange, UserNamespaceMappings, mount_is_idmapped
from pycri.userns.namespaces import transient_user_namespace
from pycri.userns.syscalls import idmapped_clone, mount_idmapped

STAGING_DIR = "idmapped"
# Any mapping does to learn whether ID-mapped layers work.
PROBE_MAPPINGS = UserNamespaceMappings(IdRange(0, 65536, 65536), IdRange(0, 65536, 65536))
SEARCH_ONLY_MODE = 0o711
POD_ROOT_SEARCH_MODE = 0o710


def _open_userns(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def mount_idmapped_layers(
    lowers_top_first: list[Path], target: Path, upper: Path | None, work: Path | None, userns: Path
) -> None:
    """Mount the snapshot dirs at `target` as overlay_mount does, each lower dir ID-mapped by
    the user namespace pinned at `userns`. overlayfs takes its own private clone of each layer,
    so the detached clones are closed as soon as it is mounted."""
    userns_fd = _open_userns(userns)
    trees: list[int] = []
    try:
        if upper is None and len(lowers_top_first) == 1:
            mount_idmapped(lowers_top_first[0], target, userns_fd, recursive=False, readonly=True)
            return
        for lower in lowers_top_first:
            trees.append(idmapped_clone(lower, userns_fd))
        overlay.mount_overlay([Path(f"/proc/self/fd/{tree}") for tree in trees], target, upper, work)
    finally:
        for tree in trees:
            os.close(tree)
        os.close(userns_fd)


def hand_to_pod_root(mappings: UserNamespaceMappings, own_dirs: Sequence[Path], shared_parents: Sequence[Path]) -> None:
    """Let the pod's root walk through `own_dirs` (outermost first, the last a container's layer
    dir or a pause bundle) and own the upper dir in the last: `shared_parents` (pycri's dirs
    above them, outermost first) get search permission for others, `own_dirs` for the group
    of the pod's root."""
    blocked = [str(p) for p in reversed(shared_parents[0].parents) if not p.stat().st_mode & stat.S_IXOTH]
    if blocked:
        raise FailedPrecondition(
            f"a pod in a user namespace needs {', '.join(blocked)} searchable by others (o+x): "
            "its root reaches the container's rootfs by path"
        )
    for parent in shared_parents:
        parent.chmod(SEARCH_ONLY_MODE)
    for own in own_dirs:
        os.chown(own, -1, mappings.root_gid)
        own.chmod(POD_ROOT_SEARCH_MODE)
    upper = own_dirs[-1] / "upper"
    if upper.is_dir():
        os.chown(upper, mappings.root_uid, mappings.root_gid)


def _stage(sources: Sequence[Path], staging: Path, userns: Path) -> list[Path]:
    """An ID-mapped mount of each source at staging/<n>; the targets, in order."""
    staging.mkdir(mode=0o700)
    userns_fd = _open_userns(userns)
    targets: list[Path] = []
    try:
        for number, source in enumerate(sources):
            target = staging / str(number)
            if source.is_dir():
                target.mkdir(mode=0o700)
            else:
                target.touch(mode=0o600)
            mount_idmapped(source, target, userns_fd, recursive=True)
            targets.append(target)
    finally:
        os.close(userns_fd)
    return targets


def stage_idmapped_binds(
    config: api_pb2.ContainerConfig,
    paths: SandboxPaths,
    mappings: UserNamespaceMappings,
    userns: Path,
    layers: Path,
) -> tuple[api_pb2.ContainerConfig, SandboxPaths]:
    """The config and sandbox paths for the spec, with the pod's files and every mount asking
    for an ID mapping turned into binds of ID-mapped mounts staged under `layers`."""
    idmapped = [
        number
        for number, mount in enumerate(config.mounts)
        if mount_is_idmapped(mount, mappings, f"config.mounts[{number}]")
    ]
    pod_files = [paths.hostname, paths.hosts, paths.resolv_conf]
    sources = [*pod_files, *(Path(config.mounts[number].host_path) for number in idmapped)]
    targets = _stage(sources, layers / STAGING_DIR, userns)
    for_spec = api_pb2.ContainerConfig()
    for_spec.CopyFrom(config)
    for number, target in zip(idmapped, targets[len(pod_files) :], strict=True):
        bind = for_spec.mounts[number]
        bind.host_path = str(target)
        bind.ClearField("uidMappings")
        bind.ClearField("gidMappings")
    hostname, hosts, resolv_conf = targets[: len(pod_files)]
    return for_spec, dataclasses.replace(paths, hostname=hostname, hosts=hosts, resolv_conf=resolv_conf)


def unstage_idmapped_binds(layers: Path) -> None:
    """Unmount and remove the staged ID-mapped mounts; none there is fine. Never removes
    anything while a mount is left below: that would delete what it shows."""
    staging = layers / STAGING_DIR
    if not staging.is_dir():
        return
    for target in staging.iterdir():
        overlay.unmount(target)
    left = mounts_at_or_below(staging)
    if left:
        raise overlay.MountError(f"staged ID-mapped mounts still mounted: {', '.join(left)}")
    shutil.rmtree(staging)


def idmap_problem(snapshots: Path, scratch_parent: Path) -> str | None:
    """Why containers cannot get ID-mapped layers here; None when they can. It mounts an
    overlay the way containers get one, with the snapshots dir as an ID-mapped layer, at a
    scratch dir named like a container's under `scratch_parent` (so the orphan sweep removes
    it should pycri die meanwhile), then unmounts and removes it."""
    scratch = scratch_parent / secrets.token_hex(32)
    try:
        (scratch / "empty").mkdir(parents=True, mode=0o700)
        (scratch / "rootfs").mkdir()
        with transient_user_namespace(PROBE_MAPPINGS) as userns:
            layers = [snapshots, scratch / "empty"]
            mount_idmapped_layers(layers, scratch / "rootfs", None, None, Path(f"/proc/self/fd/{userns}"))
        overlay.unmount(scratch / "rootfs")
    except (OSError, overlay.MountError) as exc:
        return str(exc)
    finally:
        if not mounts_at_or_below(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
    return None
