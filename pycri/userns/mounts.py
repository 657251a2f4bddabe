"""The mounts of a container (or pause process) in its pod's user namespace, made by pycri.

runc 1.1 joins the pod's user namespace but makes no ID-mapped mount itself, so pycri makes
them and hands runc plain paths:

- the rootfs and image volumes are overlays whose lower layers are ID-mapped clones of the
  snapshot dirs (overlayfs itself takes no ID mapping); the upper dir belongs to the pod's
  root, so files the container writes are owned on disk by the host IDs it runs as;
- the pod's hostname, hosts and resolv.conf files, every CRI mount kubelet asks to be
  ID-mapped and every bind mount CDI devices or NRI plugins add are ID-mapped mounts staged
  under <layers>/idmapped/<n>, which runc binds (a bind keeps the mapping) and pycri unmounts
  once the runtime has made the container. runc opens bind sources on the host's side, so the
  staging dir stays root's own.

runc's init, already inside the user namespace, mounts the rootfs by its path, so the pod's
root must be able to walk there from /. The layers of these containers and pause processes
therefore live in a subtree of their own, <root>/userns/{containers,sandboxes}/<id>: the root
dir and that subtree are search-only for others (0711, nothing can be listed), set once at
start where user namespaces are offered, and each <id> dir is searchable by the group of its
pod's root only (0710, still owned by root). Everything else under the root dir, and the whole
state dir, stays root's alone (0700).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.errors import FailedPrecondition
from pycri.image import overlay
from pycri.oci.spec import SandboxPaths
from pycri.recovery.mounts import mounts_at_or_below
from pycri.userns.mappings import IdRange, UserNamespaceMappings, mount_is_idmapped
from pycri.userns.namespaces import transient_user_namespace
from pycri.userns.syscalls import idmapped_clone, mount_idmapped

STAGING_DIR = "idmapped"
_NODE_TYPES = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}
# Any mapping does to learn whether ID-mapped layers work.
PROBE_MAPPINGS = UserNamespaceMappings(IdRange(0, 65536, 65536), IdRange(0, 65536, 65536))


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


def _stage(sources: Sequence[Path], staging: Path, userns: Path) -> list[Path]:
    """An ID-mapped mount of each source at staging/<n>, numbered on from those staged before;
    the targets, in order."""
    staging.mkdir(mode=0o700, exist_ok=True)
    first = len(os.listdir(staging))
    userns_fd = _open_userns(userns)
    targets: list[Path] = []
    try:
        for number, source in enumerate(sources, start=first):
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


def is_bind(mount: dict[str, Any]) -> bool:
    """Whether an OCI spec mount is a bind mount (by its type or, as runc reads it, its options)."""
    options = mount.get("options") or ()
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def bind_mounts(spec: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """The (destination, source) of every bind mount in an OCI spec."""
    return frozenset((m.get("destination", ""), m.get("source", "")) for m in spec.get("mounts") or () if is_bind(m))


def stage_added_binds(spec: dict[str, Any], present: frozenset[tuple[str, str]], userns: Path, layers: Path) -> None:
    """ID-map the bind mounts added to `spec` since it had the binds `present` (those CDI devices
    and NRI plugins add): each source is staged under `layers` like the CRI mounts, and its
    entry in the spec binds the staged mount instead. Without that, their files would show as
    nobody inside. A source that cannot be ID-mapped: FAILED_PRECONDITION naming the mount."""
    staging = layers / STAGING_DIR
    for mount in spec.get("mounts") or ():
        if not is_bind(mount) or (mount.get("destination", ""), mount.get("source", "")) in present:
            continue
        source = Path(mount.get("source", ""))
        named = f"mount {mount.get('destination')!r} (from {str(source)!r})"
        if not source.is_absolute():
            raise FailedPrecondition(f"{named}: a bind mount in a pod's user namespace needs an absolute source")
        try:
            (target,) = _stage([source], staging, userns)
        except OSError as err:
            raise FailedPrecondition(
                f"{named}: an added bind mount must be ID-mapped for the pod's user namespace, "
                f"and this one cannot be: {err.strerror or err}"
            ) from None
        mount["source"] = str(target)


def _host_node(path: str) -> tuple[str, int] | None:
    """The type ("c", "b" or "p") and device number of the host's node at `path`, if one is there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    kind = _NODE_TYPES.get(stat.S_IFMT(info.st_mode))
    return (kind, info.st_rdev) if kind is not None else None


def check_device_nodes(spec: dict[str, Any]) -> None:
    """A container in a user namespace may not make device nodes: runc 1.1 binds the host's
    node at the same path instead. FAILED_PRECONDITION naming a device of `spec` (a CRI or CDI
    device whose host path differs from its container path, or an NRI plugin's) that the host
    has not at that path."""
    for device in (spec.get("linux") or {}).get("devices") or ():
        path, kind = str(device.get("path", "")), str(device.get("type", ""))
        major, minor = int(device.get("major", 0)), int(device.get("minor", 0))
        wanted = {"u": "c"}.get(kind, kind)
        host = _host_node(path)
        if host is not None and host[0] == wanted and (wanted == "p" or host[1] == os.makedev(major, minor)):
            continue
        raise FailedPrecondition(
            f"device {path} ({kind} {major}:{minor}): in a pod's user namespace runc binds the host's device "
            f"node at the same path, and the host has no such device at {path}"
        )


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
