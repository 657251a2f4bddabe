"""Both drivers against generated cgroup trees laid out like /sys/fs/cgroup on v1, hybrid and v2
hosts: the paths they give runc, where conmon goes, and the CRI numbers read back."""

from __future__ import annotations

import asyncio
import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from pycri.api import api_pb2
from pycri.cgroups import CgroupLayout, CgroupManager, SystemdError, TransientUnit, make_cgroup_manager
from pycri.cgroups.systemd import UNIT_EXISTS, expand_slice
from pycri.stats.cgroup_reading import read_cgroup
from pycri.stats.cri import fill_cpu_memory, read_stats_if_any
from pycri.stats.metrics import MetricLabels, MetricSink, add_cgroup_metrics

pytestmark = pytest.mark.unit

SANDBOX = "5a1d"
CONTAINER = "c0ffee"
KUBELET_PARENT = {"cgroupfs": "/kubepods/besteffort/pod123", "systemd": "kubepods-besteffort-pod123.slice"}
CONTAINER_DIR = {
    "cgroupfs": f"kubepods/besteffort/pod123/{CONTAINER}",
    "systemd": f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice/pycri-{CONTAINER}.scope",
}
MiB = 1024 * 1024
V1_MEMORY_STAT = """\
cache 8388608
rss 33554432
mapped_file 1048576
pgfault 900
pgmajfault 2
inactive_file 4194304
total_cache 8388608
total_rss 33554432
total_mapped_file 1048576
total_pgfault 1200
total_pgmajfault 5
total_inactive_file 6291456
total_swap 0
"""
V2_MEMORY_STAT = """\
anon 33554432
file 8388608
kernel 2097152
file_mapped 1048576
inactive_file 6291456
pgfault 1200
pgmajfault 5
"""


@dataclass
class Tree:
    """A generated /sys/fs/cgroup: "v1" (each controller its own mount, cpu and cpuacct co-mounted),
    "hybrid" (v1 plus a cgroup2 at unified/) or "v2" (one cgroup2 at the root)."""

    root: Path
    version: str
    layout: CgroupLayout = field(init=False)

    def __post_init__(self) -> None:
        if self.version == "v2":
            self.layout = CgroupLayout(unified=self.root)
        else:
            comounted = self.root / "cpu,cpuacct"
            v1 = {
                "cpu": comounted,
                "cpuacct": comounted,
                "memory": self.root / "memory",
                "pids": self.root / "pids",
                "cpuset": self.root / "cpuset",
                "name=systemd": self.root / "systemd",
            }
            hybrid = self.root / "unified" if self.version == "hybrid" else None
            self.layout = CgroupLayout(v1=v1, hybrid_unified=hybrid)
        for mount in self.layout.hierarchy_mounts():
            mount.mkdir(parents=True, exist_ok=True)
        if "cpuset" in self.layout.v1:
            (self.layout.v1["cpuset"] / "cpuset.cpus").write_text("0-1\n")
            (self.layout.v1["cpuset"] / "cpuset.mems").write_text("0\n")

    def write(self, controller: str, directory: PurePosixPath, files: dict[str, str]) -> None:
        mount = self.layout.unified or self.layout.v1[controller]
        (mount / directory).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (mount / directory / name).write_text(text)

    def fill(self, directory: PurePosixPath, pids: tuple[int, ...]) -> None:
        """A container using 48 MiB of 64 MiB, 2.5 s of CPU (2 s user), 3 tasks."""
        procs = "".join(f"{pid}\n" for pid in pids)
        if self.version == "v2":
            self.write(
                "",
                directory,
                {
                    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                    "nr_periods 40\nnr_throttled 4\nthrottled_usec 300000\n",
                    "cpu.max": "50000 100000\n",
                    "cpu.weight": "4\n",
                    "memory.current": f"{48 * MiB}\n",
                    "memory.max": f"{64 * MiB}\n",
                    "memory.stat": V2_MEMORY_STAT,
                    "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
                    "pids.current": "3\n",
                    "pids.max": "max\n",
                    "cgroup.procs": procs,
                    "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=2000000\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
                },
            )
            return
        self.write(
            "cpu",
            directory,
            {
                "cpuacct.usage": "2500000000\n",
                "cpuacct.usage_user": "2000000000\n",
                "cpuacct.usage_sys": "500000000\n",
                "cpu.stat": "nr_periods 40\nnr_throttled 4\nthrottled_time 300000000\n",
                "cpu.cfs_period_us": "100000\n",
                "cpu.cfs_quota_us": "50000\n",
                "cpu.shares": "102\n",
            },
        )
        self.write(
            "memory",
            directory,
            {
                "memory.usage_in_bytes": f"{48 * MiB}\n",
                "memory.limit_in_bytes": f"{64 * MiB}\n",
                "memory.stat": V1_MEMORY_STAT,
                "memory.failcnt": "7\n",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                "cgroup.procs": procs,
            },
        )
        self.write("pids", directory, {"pids.current": "3\n", "pids.max": "max\n", "cgroup.procs": procs})


class FakeSystemd:
    """A SystemdBus at the edge: records the calls, and makes or removes a unit's cgroup in the
    hierarchies systemd manages (all but v1's cpuset), as systemd does for transient units."""

    def __init__(self, layout: CgroupLayout) -> None:
        self.layout = layout
        self.calls: list[tuple[str, object]] = []
        self.units: dict[str, list[Path]] = {}

    def managed_mounts(self) -> list[Path]:
        return [mount for mount in self.layout.hierarchy_mounts() if mount != self.layout.v1.get("cpuset")]

    def start_transient_unit(self, unit: TransientUnit) -> None:
        self.calls.append(("start", unit))
        if unit.name in self.units:
            raise SystemdError(f"unit {unit.name} exists", dbus_error=UNIT_EXISTS)
        directory = expand_slice(unit.name) if not unit.slice else expand_slice(unit.slice) / unit.name
        self.units[unit.name] = [mount / directory for mount in self.managed_mounts()]
        for path in self.units[unit.name]:
            path.mkdir(parents=True, exist_ok=True)
            (path / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in unit.pids))

    def stop_unit(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.exit(name)

    def exit(self, name: str) -> None:
        """The unit's processes are gone and systemd removed its cgroup."""
        for path in self.units.pop(name, []):
            shutil.rmtree(path)


VERSIONS = ("v1", "hybrid", "v2")
DRIVERS = ("cgroupfs", "systemd")


@pytest.fixture(params=VERSIONS)
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Tree:
    return Tree(tmp_path / "sys-fs-cgroup", request.param)


@pytest.fixture
def systemd(tree: Tree) -> FakeSystemd:
    return FakeSystemd(tree.layout)


def manager_for(driver: str, tree: Tree, systemd: FakeSystemd, conmon_cgroup: str = "pod") -> CgroupManager:
    return make_cgroup_manager(driver, "/pycri", conmon_cgroup, layout=tree.layout, systemd=systemd)


@pytest.mark.parametrize("driver", DRIVERS)
def test_container_stats_read_as_cri_usage(driver: str, tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for(driver, tree, systemd)
    path = cgroups.container_path(KUBELET_PARENT[driver], CONTAINER)
    assert cgroups.directory(path) == PurePosixPath(CONTAINER_DIR[driver])
    assert read_stats_if_any(cgroups, path) is None
    tree.fill(cgroups.directory(path), pids=(41, 42))

    stats = read_stats_if_any(cgroups, path)
    assert stats is not None
    cpu, memory = api_pb2.CpuUsage(), api_pb2.MemoryUsage()
    fill_cpu_memory(cpu, memory, stats)

    assert cpu.usage_core_nano_seconds.value == 2_500_000_000
    assert memory.usage_bytes.value == 48 * MiB
    assert memory.working_set_bytes.value == 48 * MiB - 6 * MiB
    assert memory.rss_bytes.value == 32 * MiB
    assert memory.available_bytes.value == 64 * MiB - (48 * MiB - 6 * MiB)
    assert (memory.page_faults.value, memory.major_page_faults.value) == (1200, 5)
    assert stats.pids == 3
    assert cgroups.exists(path)


@pytest.mark.parametrize("driver", DRIVERS)
def test_container_details_and_metrics(driver: str, tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for(driver, tree, systemd)
    path = cgroups.container_path(KUBELET_PARENT[driver], CONTAINER)
    tree.fill(cgroups.directory(path), pids=(41, 42))

    details = cgroups.read_details(path)
    reading = read_cgroup(cgroups, path)
    assert reading is not None
    sink = MetricSink(MetricLabels("app", CONTAINER, "busybox", "app", "default", "pod"), 1)
    add_cgroup_metrics(sink, reading)
    values = {(metric.name, tuple(metric.label_values[6:])): metric.value.value for metric in sink.metrics}

    assert (details.cpu.user_ns, details.cpu.system_ns) == (2_000_000_000, 500_000_000)
    assert (details.cpu.periods, details.cpu.throttled_periods, details.cpu.throttled_ns) == (40, 4, 300_000_000)
    assert (details.limits.cpu_quota_us, details.limits.cpu_period_us) == (50_000, 100_000)
    assert details.limits.memory == 64 * MiB and details.limits.pids is None
    assert (details.memory.failcnt, details.memory.oom_kills) == (7, 1)
    assert details.pids == (41, 42)
    assert values[("container_cpu_usage_seconds_total", ("total",))] == 2
    assert values[("container_memory_working_set_bytes", ())] == 42 * MiB
    assert values[("container_spec_memory_limit_bytes", ())] == 64 * MiB
    assert values[("container_processes", ())] == 2
    assert values[("container_threads", ())] == 3
    assert values[("container_oom_events_total", ())] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_missing_cgroup_reads_as_not_found(driver: str, tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for(driver, tree, systemd)
    path = cgroups.container_path(KUBELET_PARENT[driver], "gone")

    with pytest.raises(FileNotFoundError):
        cgroups.read_stats(path)
    with pytest.raises(FileNotFoundError):
        cgroups.read_details(path)
    assert read_cgroup(cgroups, path) is None
    assert not cgroups.exists(path)


def test_cgroupfs_puts_conmon_in_a_leaf_of_the_pod_in_every_hierarchy(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("cgroupfs", tree, systemd)
    pod = cgroups.pod_parent("", SANDBOX)

    cgroups.place_conmon(pod, CONTAINER, 4242)

    leaf = PurePosixPath(f"pycri/pod-{SANDBOX}/conmon-{CONTAINER}")
    for directory in tree.layout.hierarchy_dirs(leaf):
        assert (directory / "cgroup.procs").read_text() == "4242"
    if "cpuset" in tree.layout.v1:  # a new cpuset takes no task before it has cpus and mems
        cpuset = tree.layout.v1["cpuset"]
        for level in (cpuset / "pycri", cpuset / leaf):
            assert (level / "cpuset.cpus").read_text() == "0-1"
            assert (level / "cpuset.mems").read_text() == "0"
    assert cgroups.children(pod) == [f"conmon-{CONTAINER}"]
    assert cgroups.exists(cgroups.container_path(pod, f"conmon-{CONTAINER}"))
    assert systemd.calls == []


def test_cgroupfs_puts_every_conmon_in_the_configured_cgroup(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("cgroupfs", tree, systemd, conmon_cgroup="/system.slice/pycri-conmon")

    cgroups.place_conmon(cgroups.pod_parent("", SANDBOX), CONTAINER, 4242)

    for directory in tree.layout.hierarchy_dirs(PurePosixPath("system.slice/pycri-conmon")):
        assert (directory / "cgroup.procs").read_text() == "4242"


def test_systemd_starts_a_conmon_scope_in_the_pod_slice(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("systemd", tree, systemd)
    pod = KUBELET_PARENT["systemd"]

    cgroups.place_conmon(pod, CONTAINER, 4242)

    scope = f"pycri-conmon-{CONTAINER}.scope"
    assert systemd.calls == [("start", TransientUnit(scope, pod, f"pycri conmon {CONTAINER}", (4242,)))]
    conmon_path = cgroups.container_path(pod, f"conmon-{CONTAINER}")
    assert cgroups.directory(conmon_path) == expand_slice(pod) / scope
    assert cgroups.exists(conmon_path)
    assert cgroups.children(pod) == [f"conmon-{CONTAINER}"]


def test_systemd_puts_every_conmon_in_the_configured_slice(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("systemd", tree, systemd, conmon_cgroup="system-pycri.slice")

    cgroups.place_conmon("pycri-pod1.slice", CONTAINER, 7)

    ((_, unit),) = systemd.calls
    assert isinstance(unit, TransientUnit) and (unit.slice, unit.pids) == ("system-pycri.slice", (7,))


def test_systemd_makes_and_removes_its_own_pod_slice(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("systemd", tree, systemd)
    pod = cgroups.pod_parent("", SANDBOX)
    assert pod == f"pycri-pod{SANDBOX}.slice" and cgroups.owns_pod_parent(pod)

    cgroups.create_pod_parent(pod)
    cgroups.create_pod_parent(pod)  # a restart finds it running
    cgroups.create_pod_parent(KUBELET_PARENT["systemd"])  # kubelet's is kubelet's
    cgroups.place_conmon(pod, CONTAINER, 4242)
    # runc made the container's cgroup in the hierarchy systemd leaves alone (v1 cpuset).
    for mount in tree.layout.hierarchy_mounts():
        (mount / cgroups.directory(cgroups.container_path(pod, CONTAINER))).mkdir(parents=True, exist_ok=True)

    assert [call for call, _ in systemd.calls] == ["start", "start", "start"]
    with pytest.raises(OSError) as busy:
        asyncio.run(cgroups.remove(pod))
    assert busy.value.errno == errno.EBUSY
    assert ("stop", pod) not in systemd.calls  # stopping would have killed conmon

    systemd.exit(f"pycri-conmon-{CONTAINER}.scope")
    asyncio.run(cgroups.remove(pod))
    asyncio.run(cgroups.remove(pod))

    assert systemd.calls[-2:] == [("stop", pod), ("stop", pod)]
    assert not any(path.exists() for path in tree.layout.hierarchy_dirs(expand_slice(pod)))
    assert (tree.layout.hierarchy_dirs(PurePosixPath("pycri.slice"))[0]).is_dir()


def test_cgroupfs_removes_a_pod_in_every_hierarchy(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("cgroupfs", tree, systemd)
    pod = cgroups.pod_parent("", SANDBOX)
    for leaf in (CONTAINER, f"conmon-{CONTAINER}"):
        for directory in tree.layout.hierarchy_dirs(cgroups.directory(cgroups.container_path(pod, leaf))):
            directory.mkdir(parents=True)

    assert cgroups.children(pod) == [CONTAINER, f"conmon-{CONTAINER}"]
    asyncio.run(cgroups.remove(pod))
    asyncio.run(cgroups.remove(pod))

    assert not cgroups.exists(pod)
    assert cgroups.children(pod) == []


def test_systemd_children_are_leaves_and_slices(tree: Tree, systemd: FakeSystemd) -> None:
    cgroups = manager_for("systemd", tree, systemd)
    for unit in (f"pycri-pod{SANDBOX}.slice", f"pycri-{CONTAINER}.scope", "session-1.scope"):
        (tree.layout.hierarchy_mounts()[0] / "pycri.slice" / unit).mkdir(parents=True)

    names = cgroups.children(cgroups.parent)

    assert names == [CONTAINER, f"pycri-pod{SANDBOX}.slice"]
    assert [cgroups.directory(cgroups.container_path(cgroups.parent, name)) for name in names] == [
        PurePosixPath(f"pycri.slice/pycri-{CONTAINER}.scope"),
        PurePosixPath(f"pycri.slice/pycri-pod{SANDBOX}.slice"),
    ]
