"""The orphan sweep: at start, remove what pycri made on the host and no row owns.

It runs after the rows are loaded and unfinished intents resolved, so anything of pycri's
that no sandbox or container row names is left over from a crash. In this order:

1. runtime containers (in each handler's runc/crun root, bundle under the state dir):
   `delete --force`, which also kills their processes;
2. conmon processes with pycri's exit dir: SIGKILL, each checked again right before;
3. CNI attachments of sandboxes no row owns: DEL while their netns pins still exist,
   then CniManager.gc for cached attachments of pods that are gone altogether;
4. mounts under <root or state>/{containers,sandboxes}/<id> (and <root>/userns/..., where
   the layers of pods with user namespaces live): overlays, image volumes, staged
   ID-mapped binds, shm tmpfs, namespace pins; deepest first;
5. the <id> dirs there (never while something is still mounted inside);
6. conmon's exit files and attach links;
7. cgroups named after a pod, container or conmon under the given parents.

Every removal is logged as a warning and returned; a removal that fails is logged as an
error and the sweep goes on. What belongs to another runtime is never touched: runtime
containers must have their bundle under pycri's state dir, conmon must write to pycri's
exit dir, and cgroups must carry a pycri name under a parent pycri was given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from pycri.image import overlay
from pycri.network.cni import LOOPBACK_IFNAME, CniManager, PodAttachment
from pycri.network.netns import is_namespace_pinned
from pycri.oci.runtime import ContainerState, RuntimeHandler
from pycri.recovery import procs
from pycri.recovery.mounts import Owner, deepest_first, is_within, mounts_at_or_below, path_owner, read_mountinfo
from pycri.userns.layout import userns_base

log = logging.getLogger(__name__)

CONMON_KILL_WAIT_SECONDS = 10.0
EXIT_DIR = "exits"
ATTACH_DIR = "attach"
_ID = r"(?P<id>[0-9a-f]{64})"
# Child cgroup names pycri gives (cgroupfs, and the systemd driver's slices and scopes).
_CGROUP_NAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"pod-{_ID}"), "sandbox"),
    (re.compile(rf".+-pod{_ID}\.slice"), "sandbox"),
    (re.compile(rf"(?:pycri-)?conmon-{_ID}(?:\.scope)?"), "runtime"),
    (re.compile(rf"(?:pycri-)?{_ID}(?:\.scope)?"), "runtime"),
)


class RuntimeDriver(Protocol):
    """What the sweep needs of an OCI runtime driver (pycri.oci.driver.ContainerRuntime)."""

    @property
    def handler(self) -> RuntimeHandler: ...

    async def list_containers(self) -> list[ContainerState]: ...

    async def delete(self, container_id: str, force: bool = False) -> None: ...


class CgroupOps(Protocol):
    """What the sweep needs of the cgroup manager (pycri.cgroups.manager.CgroupManager)."""

    def children(self, parent: str) -> list[str]:
        """Leaf names directly below `parent` (none when it does not exist)."""
        ...

    def container_path(self, parent: str, leaf: str) -> str:
        """The cgroups path of a leaf under `parent`, as remove() takes it."""
        ...

    async def remove(self, cgroups_path: str) -> None:
        """Remove the cgroup and every cgroup below it."""
        ...


@dataclass(frozen=True)
class SweepScope:
    root_dir: Path
    state_dir: Path
    runtimes: Sequence[RuntimeDriver]  # one per handler (its own --root)
    pod_cgroup_parents: Sequence[str]  # pycri's own cgroup parent and every owned pod's

    def object_bases(self) -> tuple[Path, ...]:
        """The dirs holding containers/<id> and sandboxes/<id>."""
        return (self.root_dir, self.state_dir, userns_base(self.root_dir))


@dataclass(frozen=True)
class Owned:
    sandbox_ids: frozenset[str]
    container_ids: frozenset[str]

    def owns(self, owner: Owner) -> bool:
        if owner.kind == "sandbox":
            return owner.id in self.sandbox_ids
        if owner.kind == "container":
            return owner.id in self.container_ids
        return owner.id in self.sandbox_ids or owner.id in self.container_ids


@dataclass(frozen=True)
class Removal:
    kind: str  # "runtime container", "conmon", "cni attachment", "mount", "netns", "directory", ...
    what: str  # path, id or pid
    why: str


def why_orphan(owner: Owner) -> str:
    rows = {"sandbox": "sandbox row", "container": "container row"}.get(owner.kind, "container or sandbox row")
    return f"no {rows} owns id {owner.id}"


def cgroup_owner(name: str) -> Owner | None:
    """The owner of a child cgroup by its name, None for a name pycri does not give."""
    for pattern, kind in _CGROUP_NAMES:
        found = pattern.fullmatch(name)
        if found:
            return Owner(kind, found.group("id"))
    return None


@dataclass
class _Sweep:
    scope: SweepScope
    owned: Owned
    removals: list[Removal] = field(default_factory=list)

    def record(self, kind: str, what: str, why: str) -> None:
        self.removals.append(Removal(kind, what, why))
        log.warning("removed orphan", extra={"fields": {"kind": kind, "what": what, "why": why}})

    async def remove(self, kind: str, what: str, why: str, action: Callable[[], Awaitable[bool | None]]) -> None:
        """Run `action`; record the removal unless it failed or found nothing to do (returned False)."""
        try:
            done = await action()
        except Exception as error:  # noqa: BLE001 - one failing removal must not stop the sweep
            fields = {"kind": kind, "what": what, "why": why, "error": str(error) or repr(error)}
            log.error("orphan removal failed", extra={"fields": fields})
            return
        if done is not False:
            self.record(kind, what, why)

    def orphan_entries(self, kind: str) -> list[tuple[Path, Owner]]:
        """<root or state>/<containers or sandboxes>/<id> entries whose id no row of `kind` owns."""
        directory = {"container": "containers", "sandbox": "sandboxes"}[kind]
        found = []
        for base in self.scope.object_bases():
            try:
                names = sorted(os.listdir(base / directory))
            except FileNotFoundError:
                continue
            found += [(base / directory / n, Owner(kind, n)) for n in names if not self.owned.owns(Owner(kind, n))]
        return found


async def sweep_orphans(
    scope: SweepScope,
    owned: Owned,
    cgroups: CgroupOps,
    network: CniManager | None,
    valid_attachments: Sequence[PodAttachment],
) -> list[Removal]:
    """Remove everything of pycri's on the host that `owned` does not name; returns what was removed."""
    sweep = _Sweep(scope, owned)
    await _runtime_containers(sweep)
    await _conmons(sweep)
    if network is not None:
        await _network(sweep, network, valid_attachments)
    await _mounts(sweep)
    await _files(sweep)
    await _cgroups(sweep, cgroups)
    log.info("orphan sweep done", extra={"fields": {"removed": len(sweep.removals)}})
    return sweep.removals


async def _runtime_containers(sweep: _Sweep) -> None:
    for runtime in sweep.scope.runtimes:
        name = runtime.handler.name
        try:
            states = await runtime.list_containers()
        except Exception as error:  # noqa: BLE001 - the other runtimes are still swept
            log.error("listing runtime containers failed", extra={"fields": {"runtime": name, "error": str(error)}})
            continue
        for state in states:
            owner = Owner("runtime", state.id)
            # A bundle elsewhere is not one pycri wrote: that container is not pycri's to delete.
            if sweep.owned.owns(owner) or not is_within(state.bundle, sweep.scope.state_dir):
                continue
            action = partial(runtime.delete, state.id, force=True)
            await sweep.remove("runtime container", f"{name} {state.id}", why_orphan(owner), action)


async def _conmons(sweep: _Sweep) -> None:
    found = await asyncio.to_thread(procs.find_conmons, sweep.scope.state_dir / EXIT_DIR)
    for pid, args in found:
        owner = Owner("runtime", args.container_id)
        if sweep.owned.owns(owner):
            continue
        kill = partial(asyncio.to_thread, procs.kill_conmon, pid, args, CONMON_KILL_WAIT_SECONDS)
        await sweep.remove("conmon", f"pid {pid} (container {args.container_id})", why_orphan(owner), kill)


async def _network(sweep: _Sweep, network: CniManager, valid_attachments: Sequence[PodAttachment]) -> None:
    orphans = await asyncio.to_thread(sweep.orphan_entries, "sandbox")
    for sandbox_id in sorted({owner.id for _, owner in orphans}):
        await _detach_orphan_pod(sweep, network, sandbox_id)
    # Attachments the cache still holds for pods that are gone altogether (dirs included).
    cached = await asyncio.to_thread(network.cache.attachments)
    kept = [*valid_attachments]
    kept += [
        PodAttachment(entry.runtime.container_id, Path(entry.runtime.netns), "", "", "", ifname=entry.runtime.ifname)
        for entry in cached
        if entry.runtime.container_id in sweep.owned.sandbox_ids
    ]
    kept_keys = {(a.container_id, ifname) for a in kept for ifname in (a.ifname, LOOPBACK_IFNAME)}
    stale = [e for e in cached if (e.runtime.container_id, e.runtime.ifname) not in kept_keys]
    try:
        await network.gc(kept)
    except Exception as error:  # noqa: BLE001 - an ExceptionGroup of what failed; logged, the sweep goes on
        failures = error.exceptions if isinstance(error, ExceptionGroup) else (error,)
        for failure in failures:
            log.error("CNI garbage collection failed", extra={"fields": {"error": str(failure)}})
    for entry in stale:
        runtime = entry.runtime
        if not await asyncio.to_thread(
            network.cache.path(entry.network.name, runtime.container_id, runtime.ifname).exists
        ):
            what = f"{runtime.container_id} {entry.network.name}/{runtime.ifname}"
            sweep.record("cni attachment", what, why_orphan(Owner("sandbox", runtime.container_id)))


async def _detach_orphan_pod(sweep: _Sweep, network: CniManager, sandbox_id: str) -> None:
    """DEL an orphan pod's attachments: the cached ones, and without a cache entry (a crash in
    ADD) its interface by the current network when it had a network namespace of its own."""
    netns = sweep.scope.state_dir / "sandboxes" / sandbox_id / "netns"
    cached = await asyncio.to_thread(network.cache.attachments, sandbox_id)
    has_netns = await asyncio.to_thread(os.path.lexists, netns)
    if not cached and (not has_netns or await asyncio.to_thread(network.network) is None):
        return
    if has_netns and not await asyncio.to_thread(is_namespace_pinned, netns):
        # An empty file, not a namespace: plugins must get no CNI_NETNS rather than this.
        await asyncio.to_thread(netns.unlink)
    names = [f"{entry.network.name}/{entry.runtime.ifname}" for entry in cached] or [
        "eth0 (not cached: DEL by the current network)"
    ]
    attachment = PodAttachment(sandbox_id, netns, "", "", "")
    why = why_orphan(Owner("sandbox", sandbox_id))
    await sweep.remove("cni attachment", f"{sandbox_id} {', '.join(names)}", why, partial(network.delete, attachment))


async def _mounts(sweep: _Sweep) -> None:
    bases = sweep.scope.object_bases()
    real_bases = await asyncio.to_thread(lambda: tuple(dict.fromkeys(os.path.realpath(b) for b in bases)))
    entries = await asyncio.to_thread(read_mountinfo)
    for entry in deepest_first(entries):
        owner = path_owner(entry.mount_point, real_bases)
        if owner is None or sweep.owned.owns(owner):
            continue
        kind = "mount"
        if entry.fs_type == "nsfs":
            kind = "netns" if os.path.basename(entry.mount_point) == "netns" else "namespace pin"
        action = partial(asyncio.to_thread, overlay.unmount, Path(entry.mount_point))
        await sweep.remove(kind, entry.mount_point, f"{why_orphan(owner)} ({entry.fs_type})", action)


def _remove_entry(path: Path) -> None:
    """Remove a file or a dir tree, but never through a mount: rmtree would delete what is mounted."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    still_mounted = mounts_at_or_below(path)
    if still_mounted:
        raise OSError(f"{path} still has mounts: {', '.join(still_mounted)}")
    shutil.rmtree(path)


async def _files(sweep: _Sweep) -> None:
    for kind in ("container", "sandbox"):
        for path, owner in await asyncio.to_thread(sweep.orphan_entries, kind):
            entry_kind = "directory" if await asyncio.to_thread(path.is_dir) else "file"
            await sweep.remove(
                entry_kind, str(path), why_orphan(owner), partial(asyncio.to_thread, _remove_entry, path)
            )
    for directory, kind in ((EXIT_DIR, "exit file"), (ATTACH_DIR, "attach link")):
        base = sweep.scope.state_dir / directory
        try:
            names = sorted(await asyncio.to_thread(os.listdir, base))
        except FileNotFoundError:
            continue
        for name in names:
            owner = Owner("runtime", name)
            if not sweep.owned.owns(owner):
                action = partial(asyncio.to_thread, _remove_entry, base / name)
                await sweep.remove(kind, str(base / name), why_orphan(owner), action)


async def _cgroups(sweep: _Sweep, cgroups: CgroupOps) -> None:
    for parent in dict.fromkeys(sweep.scope.pod_cgroup_parents):
        try:
            names = await asyncio.to_thread(cgroups.children, parent)
        except Exception as error:  # noqa: BLE001 - the other parents are still swept
            log.error("listing cgroups failed", extra={"fields": {"parent": parent, "error": str(error)}})
            continue
        for name in sorted(names):
            owner = cgroup_owner(name)
            if owner is None or sweep.owned.owns(owner):
                continue
            try:
                path = cgroups.container_path(parent, name)
            except ValueError as error:
                log.error(
                    "orphan cgroup has no path", extra={"fields": {"parent": parent, "leaf": name, "error": str(error)}}
                )
                continue
            await sweep.remove("cgroup", path, why_orphan(owner), partial(cgroups.remove, path))
