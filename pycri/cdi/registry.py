"""The devices the CDI spec dirs define, read afresh for each container that asks for one.

Each spec dir is read in turn (its *.json and *.yaml files, not its subdirectories); a device
defined in a later dir replaces one of the same name in an earlier dir, as the CDI reference
orders /etc/cdi before /var/run/cdi. Two definitions in one dir conflict: neither is used,
and the conflict is reported with the files. A spec file that cannot be used is reported and
skipped; the others still count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycri.api import api_pb2
from pycri.cdi.names import requested_devices
from pycri.cdi.spec import CdiSpec, ContainerEdits, Device, InvalidCdiSpec, read_spec
from pycri.errors import InvalidArgument

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".json", ".yaml")


class UnresolvedDevices(InvalidArgument):
    """CDI devices no usable spec defines; the message names each (and why, when a spec says)."""


@dataclass(frozen=True)
class ResolvedDevices:
    """What injecting the requested devices applies: each spec's own edits once, then each device's."""

    names: tuple[str, ...]
    edits: tuple[ContainerEdits, ...]


@dataclass
class Registry:
    devices: dict[str, tuple[CdiSpec, Device]] = field(default_factory=dict)
    conflicts: dict[str, list[Path]] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)  # spec file -> why it is not used

    def resolve(self, names: Sequence[str]) -> ResolvedDevices:
        missing = [name for name in names if name not in self.devices]
        if missing:
            raise UnresolvedDevices("unresolvable CDI devices: " + "; ".join(map(self._why_missing, missing)))
        edits: list[ContainerEdits] = []
        seen_specs: set[Path] = set()
        for name in names:
            spec, device = self.devices[name]
            if spec.path not in seen_specs:
                seen_specs.add(spec.path)
                edits.append(spec.edits)
            edits.append(device.edits)
        return ResolvedDevices(tuple(names), tuple(edits))

    def _why_missing(self, name: str) -> str:
        if name in self.conflicts:
            return f"{name} (defined in more than one spec: {', '.join(map(str, self.conflicts[name]))})"
        if self.errors:
            return f"{name} (no usable spec defines it; {len(self.errors)} spec file(s) could not be used)"
        return f"{name} (no spec defines it)"


def spec_files(directory: Path) -> list[Path]:
    """The spec files of one dir in name order; none when the dir does not exist."""
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    return [path for path in entries if path.suffix in SPEC_SUFFIXES and not path.is_dir()]


def load_registry(spec_dirs: Iterable[Path]) -> Registry:
    """Read every spec of the dirs (a blocking call: run it in a thread)."""
    registry = Registry()
    for priority, directory in enumerate(spec_dirs):
        try:
            files = spec_files(directory)
        except OSError as err:
            registry.errors[directory] = f"cannot list the spec dir: {err.strerror}"
            continue
        for path in files:
            try:
                spec = read_spec(path, priority)
            except (OSError, InvalidCdiSpec) as err:
                registry.errors[path] = str(err) if isinstance(err, InvalidCdiSpec) else f"{path}: {err.strerror}"
                continue
            _add(registry, spec)
    for name in registry.conflicts:
        registry.devices.pop(name, None)
    for path, why in registry.errors.items():
        log.warning("CDI spec not used", extra={"fields": {"path": str(path), "error": why}})
    for name, paths in registry.conflicts.items():
        log.warning("CDI device conflict", extra={"fields": {"device": name, "specs": [str(p) for p in paths]}})
    return registry


def _add(registry: Registry, spec: CdiSpec) -> None:
    for device in spec.devices.values():
        name = spec.qualified(device.name)
        known = registry.devices.get(name)
        if known is None or known[0].priority < spec.priority:
            registry.devices[name] = (spec, device)
            registry.conflicts.pop(name, None)
        elif known[0].priority == spec.priority:
            paths = registry.conflicts.setdefault(name, [known[0].path])
            paths.append(spec.path)


async def resolve_requested(config: api_pb2.ContainerConfig, spec_dirs: Iterable[Path]) -> ResolvedDevices | None:
    """The CDI devices `config` asks for (CDI_devices and cdi.k8s.io/ annotations), resolved
    against the spec dirs as they are now; None when it asks for none. INVALID_ARGUMENT naming a
    device that is malformed or that no usable spec defines."""
    names = requested_devices(config)
    if not names:
        return None
    registry = await asyncio.to_thread(load_registry, list(spec_dirs))
    return registry.resolve(names)
