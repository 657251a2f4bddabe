"""Everything one pycri daemon could leave on the host, and a readable diff of what it leaked.

A `HostSnapshot` is scoped to one daemon through its config file: mounts and namespace pins
under its root and state dirs, cgroups below its cgroup parent in every hierarchy, conmon
processes using its exit dir and any process in those cgroups, the host-local addresses and
nat rules of its pod network, ports on its bridge, the per-object dirs it keeps, and the rows
of its database. Take one before an operation and one after cleanup; `assert_no_leaks` names
every entry the second has and the first has not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pycri.config import Config, load_config
from pycri.network.cni_cache import ResultCache
from pycri.network.cni_config import NetworkConfig, load_default_network
from pycri.recovery.mounts import is_within, read_mountinfo
from tests.integration.test_cni import nat_rules
from tests.support.daemon import PycriProcess

HOST_LOCAL_DEFAULT_DATA_DIR = Path("/var/lib/cni/networks")
# Table -> the columns that name a row, then the columns that describe it.
DATABASE_ROWS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sandboxes": (("id",), ("name", "state")),
    "containers": (("id",), ("name", "state")),
    "snapshot_leases": (("owner", "chain_id"), ()),
    "intents": (("object_id", "kind"), ("plan",)),
}
_IPV4_TOKEN = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?")

# Each category maps what identifies an entry to a line describing it.
Entries = dict[str, str]


@dataclass(frozen=True)
class LeakScope:
    """Where one daemon keeps things, read from its config file and its CNI conf dir."""

    config: Config
    network: NetworkConfig | None

    @classmethod
    def of(cls, daemon: PycriProcess) -> LeakScope:
        config = load_config(daemon.config_path)
        return cls(config, load_default_network(config.cni.conf_dir))

    @property
    def exit_dir(self) -> Path:
        return self.config.state_dir / "exits"

    @property
    def cgroup_parent(self) -> str:
        return self.config.runtime.cgroup_parent

    def object_dirs(self) -> list[Path]:
        """Dirs holding one entry per pod, container, snapshot or runc container."""
        root, state = self.config.root_dir, self.config.state_dir
        handler_roots = [self.config.handler_root(name) for name in self.config.runtime.handlers]
        return [
            root / "containers",
            root / "sandboxes",
            root / "userns" / "containers",
            root / "userns" / "sandboxes",
            root / "snapshots",
            state / "containers",
            state / "sandboxes",
            state / "exits",
            state / "attach",
            *handler_roots,
            ResultCache(root / "cni").results_dir,
        ]

    def _bridge_plugins(self) -> list[dict[str, Any]]:
        plugins = self.network.plugins if self.network is not None else ()
        return [plugin for plugin in plugins if plugin.get("type") == "bridge"]

    def host_local_stores(self) -> list[Path]:
        """host-local keeps one file per address in <dataDir>/<network name>; only this network's."""
        if self.network is None:
            return []
        stores = []
        for plugin in self.network.plugins:
            ipam = plugin.get("ipam") or {}
            if ipam.get("type") == "host-local":
                data_dir = Path(ipam.get("dataDir") or HOST_LOCAL_DEFAULT_DATA_DIR)
                stores.append(data_dir / self.network.name)
        return stores

    def bridges(self) -> list[str]:
        return [plugin.get("bridge") or "cni0" for plugin in self._bridge_plugins()]

    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        found = []
        for plugin in self.network.plugins if self.network is not None else ():
            ipam = plugin.get("ipam") or {}
            ranges = [entry for range_set in ipam.get("ranges") or [] for entry in range_set]
            if "subnet" in ipam:
                ranges.append({"subnet": ipam["subnet"]})
            found += [ipaddress.ip_network(entry["subnet"], strict=False) for entry in ranges if "subnet" in entry]
        return found


@dataclass(frozen=True)
class HostSnapshot:
    mounts: Entries = field(default_factory=dict)
    namespace_pins: Entries = field(default_factory=dict)
    cgroups: Entries = field(default_factory=dict)
    processes: Entries = field(default_factory=dict)
    ip_allocations: Entries = field(default_factory=dict)
    nat_rules: Entries = field(default_factory=dict)
    bridge_ports: Entries = field(default_factory=dict)
    directories: Entries = field(default_factory=dict)
    rows: Entries = field(default_factory=dict)


def take(daemon: PycriProcess) -> HostSnapshot:
    """What `daemon` has on the host right now (it may be running or not)."""
    scope = LeakScope.of(daemon)
    mounts, pins = _mounts(scope)
    return HostSnapshot(
        mounts=mounts,
        namespace_pins=pins,
        cgroups=_cgroups(scope),
        processes={_process_key(p): _describe_process(p) for p in daemon_processes(scope)},
        ip_allocations=_ip_allocations(scope),
        nat_rules={rule: f"iptables -t nat {rule}" for rule in pod_network_nat_rules(scope)},
        bridge_ports=_bridge_ports(scope),
        directories={str(entry): str(entry) for parent in scope.object_dirs() for entry in _children(parent)},
        rows=_rows(scope.config.db_path),
    )


def leaks(before: HostSnapshot, after: HostSnapshot) -> dict[str, list[str]]:
    """Per category, the descriptions of entries `after` has and `before` has not."""
    found = {}
    for category in dataclasses.fields(HostSnapshot):
        earlier, later = getattr(before, category.name), getattr(after, category.name)
        new = [later[key] for key in sorted(later) if key not in earlier]
        if new:
            found[category.name] = new
    return found


def wait_for_no_leaks(daemon: PycriProcess, before: HostSnapshot, timeout: float = 10.0) -> None:
    """`assert_no_leaks` against a fresh snapshot, polled until `timeout`: exits, cgroup removal
    and network namespace teardown finish asynchronously after the call that caused them."""
    deadline = time.monotonic() + timeout
    after = take(daemon)
    while leaks(before, after) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = take(daemon)
    assert_no_leaks(before, after)


def assert_no_leaks(before: HostSnapshot, after: HostSnapshot) -> None:
    found = leaks(before, after)
    if found:
        lines = ["pycri leaked:"]
        for category, entries in found.items():
            lines.append(f"  {category.replace('_', ' ')}:")
            lines += [f"    {entry}" for entry in entries]
        report = "\n".join(lines)
        print(report)
        raise AssertionError(report)


# ---- processes ----


def daemon_processes(scope: LeakScope) -> list[psutil.Process]:
    """conmon processes using the daemon's exit dir, and every process in its cgroups."""
    exit_dir = str(scope.exit_dir)
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "conmon" and _has_option(cmdline, "--exit-dir", exit_dir):
            found[process.pid] = process
    for pid in _cgroup_pids(scope):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.setdefault(pid, psutil.Process(pid))
    return [found[pid] for pid in sorted(found)]


def _has_option(cmdline: list[str], option: str, value: str) -> bool:
    pairs = zip(cmdline, cmdline[1:], strict=False)
    return any((flag, argument) == (option, value) for flag, argument in pairs) or f"{option}={value}" in cmdline


def _cgroup_pids(scope: LeakScope) -> set[int]:
    pids: set[int] = set()
    for _hierarchy, directory in cgroup_dirs(scope):
        with contextlib.suppress(FileNotFoundError):
            pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    return pids


def _process_key(process: psutil.Process) -> str:
    try:
        return f"{process.pid}@{process.create_time()}"
    except psutil.NoSuchProcess:
        return f"{process.pid}@gone"


def _describe_process(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.NoSuchProcess:
        return f"pid {process.pid}: (exited while being listed)"


# ---- cgroups and mounts ----


def cgroup_hierarchies() -> list[Path]:
    """Where every cgroup hierarchy is mounted: each v1 one and any cgroup2."""
    return sorted({Path(entry.mount_point) for entry in read_mountinfo() if entry.fs_type in ("cgroup", "cgroup2")})


def cgroup_dirs(scope: LeakScope) -> Iterator[tuple[Path, Path]]:
    """(hierarchy mount, dir) for every cgroup strictly below the daemon's cgroup parent, in every
    hierarchy, parents before children."""
    for mount in cgroup_hierarchies():
        top = mount / scope.cgroup_parent.lstrip("/")
        for directory, subdirs, _files in os.walk(top):
            subdirs.sort()
            if Path(directory) != top:
                yield mount, Path(directory)


def _cgroups(scope: LeakScope) -> Entries:
    hierarchies: dict[str, list[str]] = {}
    for mount, directory in cgroup_dirs(scope):
        hierarchies.setdefault("/" + str(directory.relative_to(mount)), []).append(mount.name)
    return {path: f"{path} (in {', '.join(sorted(names))})" for path, names in hierarchies.items()}


def _mounts(scope: LeakScope) -> tuple[Entries, Entries]:
    """Mounts and nsfs namespace pins at or below the root and state dirs."""
    bases = [os.path.realpath(scope.config.root_dir), os.path.realpath(scope.config.state_dir)]
    mounts: Entries = {}
    pins: Entries = {}
    for entry in read_mountinfo():
        if not any(is_within(entry.mount_point, base) for base in bases):
            continue
        target = pins if entry.fs_type == "nsfs" else mounts
        # Mounts stacked on one point each count.
        layer = sum(1 for key in target if key.rsplit("#", 1)[0] == entry.mount_point)
        target[f"{entry.mount_point}#{layer}"] = f"{entry.mount_point} ({entry.fs_type})"
    return mounts, pins


# ---- network ----


def _ip_allocations(scope: LeakScope) -> Entries:
    found: Entries = {}
    for store in scope.host_local_stores():
        for entry in _children(store):
            if entry.name == "lock" or entry.name.startswith("last_reserved_ip"):
                continue
            holder = " ".join(_read_text(entry).split())
            found[str(entry)] = f"{entry.name} held by {holder or '(empty file)'} in {store}"
    return found


def pod_network_nat_rules(scope: LeakScope) -> list[str]:
    """The nat table's rules (`-A ...` lines) naming an address of the daemon's pod subnets."""
    subnets = scope.subnets()
    if not subnets:
        return []
    return [
        line
        for line in nat_rules().splitlines()
        if line.startswith("-A ") and any(_overlaps(token, subnets) for token in _IPV4_TOKEN.findall(line))
    ]


def _overlaps(token: str, subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        network = ipaddress.ip_network(token, strict=False)
    except ValueError:
        return False
    return any(network.version == subnet.version and network.overlaps(subnet) for subnet in subnets)


def _bridge_ports(scope: LeakScope) -> Entries:
    return {
        f"{bridge}/{port.name}": f"{port.name} on bridge {bridge}"
        for bridge in scope.bridges()
        for port in _children(Path("/sys/class/net") / bridge / "brif")
    }


# ---- files and rows ----


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _rows(db_path: Path) -> Entries:
    if not db_path.exists():
        return {}
    found: Entries = {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, (key_columns, detail_columns) in DATABASE_ROWS.items():
            if table not in tables:
                continue
            columns = ", ".join(key_columns + detail_columns)
            for row in db.execute(f"SELECT {columns} FROM {table}"):  # table and column names come from DATABASE_ROWS
                key = " ".join(str(value) for value in row[: len(key_columns)])
                values = row[len(key_columns) :]
                details = " ".join(
                    f"{name}={str(value)[:120]}" for name, value in zip(detail_columns, values, strict=True)
                )
                found[f"{table} {key}"] = f"{table}: {key} {details}".rstrip()
    finally:
        db.close()
    return found
