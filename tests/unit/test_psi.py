"""Pressure (PSI) and swap in the cgroup stats: the pressure file parser, the readers on generated
v1, hybrid and v2 trees, and the CRI messages filled from them."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.cgroups import CgroupManager
from pycri.cgroups.usage import Pressure, PsiData, parse_pressure, stats_v1, stats_v2
from pycri.stats.cri import UINT64_MAX, fill_cpu_memory, fill_io, fill_swap
from tests.unit.test_cgroups_manager import DRIVERS, KUBELET_PARENT, VERSIONS, FakeSystemd, Tree, manager_for

pytestmark = pytest.mark.unit

MiB = 1 << 20
CPU_PSI = "some avg10=1.50 avg60=0.25 avg300=0.05 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1200\n"
MEMORY_PSI = "some avg10=12.00 avg60=4.00 avg300=1.00 total=700\nfull avg10=6.00 avg60=2.00 avg300=0.50 total=300\n"
IO_PSI = "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=4\n"
PRESSURE_FILES = {"cpu.pressure": CPU_PSI, "memory.pressure": MEMORY_PSI, "io.pressure": IO_PSI}
V1_MEMORY_STAT = "total_rss 4096\ntotal_inactive_file 0\ntotal_swap 1048576\nswap 0\n"


def v2_stats(**files: str) -> api_pb2.ContainerStats:
    cgroup = stats_v2(
        cpu_stat="usage_usec 10\n",
        memory_current="8192\n",
        memory_max="max\n",
        memory_stat="anon 4096\n",
        pids_current="1\n",
        timestamp_ns=42,
        swap_current=files.get("memory.swap.current", ""),
        swap_max=files.get("memory.swap.max", ""),
        pressure=files,
    )
    stats = api_pb2.ContainerStats()
    fill_cpu_memory(stats.cpu, stats.memory, cgroup)
    fill_io(stats.io, cgroup)
    fill_swap(stats.swap, cgroup)
    return stats


# ---- the parser ----


def test_a_pressure_file_reads_both_lines() -> None:
    assert parse_pressure(CPU_PSI) == Pressure(
        some=PsiData(1.5, 0.25, 0.05, 2_500_000), full=PsiData(0.0, 0.0, 0.0, 1200)
    )


def test_no_file_or_no_some_line_is_no_pressure() -> None:
    assert parse_pressure("") is None
    assert parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=4\n") is None


def test_a_cpu_file_without_a_full_line_has_some_only() -> None:
    """Kernels before 5.13 write no "full" line for cpu."""
    pressure = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
    assert pressure == Pressure(some=PsiData(0.0, 0.0, 0.0, 5), full=None)


@pytest.mark.parametrize(
    "line",
    [
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=-4",
        "full avg10=nan avg60=0.00 avg300=0.00 total=4",
        "full avg10=0.00 avg60=0.00 total=4",
        "full avg10=1e3 avg60=0.00 avg300=0.00 total=4",
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=123456789012345678901",
        "full avg10=0.00 avg60=0.00 avg300=0.00",
    ],
)
def test_a_malformed_line_is_left_out(line: str) -> None:
    pressure = parse_pressure(f"some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n{line}\n")
    assert pressure is not None and pressure.full is None


def test_unknown_fields_and_order_do_not_matter() -> None:
    pressure = parse_pressure("some total=7 avg300=0.03 avg60=0.02 avg10=0.01 later=1\n")
    assert pressure == Pressure(some=PsiData(0.01, 0.02, 0.03, 7), full=None)


averages = st.integers(0, 10000).map(lambda hundredths: f"{hundredths // 100}.{hundredths % 100:02d}")


@given(st.lists(averages, min_size=6, max_size=6), st.integers(0, UINT64_MAX), st.integers(0, UINT64_MAX))
def test_what_the_kernel_writes_round_trips(values: list[str], some_total: int, full_total: int) -> None:
    text = (
        f"some avg10={values[0]} avg60={values[1]} avg300={values[2]} total={some_total}\n"
        f"full avg10={values[3]} avg60={values[4]} avg300={values[5]} total={full_total}\n"
    )
    numbers = [float(value) for value in values]
    assert parse_pressure(text) == Pressure(
        some=PsiData(*numbers[:3], total_us=some_total), full=PsiData(*numbers[3:], total_us=full_total)
    )


@given(st.text())
def test_any_text_parses_without_raising(text: str) -> None:
    pressure = parse_pressure(text)
    if pressure is not None:
        stats = v2_stats(**{"cpu.pressure": text})
        assert stats.cpu.psi.Some.Total == min(pressure.some.total_us * 1000, UINT64_MAX)


# ---- CRI messages ----


def test_v2_stats_carry_pressure_in_nanoseconds() -> None:
    stats = v2_stats(**PRESSURE_FILES)
    assert (stats.cpu.psi.Some.Total, stats.cpu.psi.Some.Avg10, stats.cpu.psi.Some.Avg60) == (2_500_000_000, 1.5, 0.25)
    assert (stats.cpu.psi.Full.Total, stats.cpu.psi.Full.Avg300) == (1_200_000, 0.0)
    assert (stats.memory.psi.Some.Avg10, stats.memory.psi.Full.Avg10, stats.memory.psi.Full.Total) == (12, 6, 300_000)
    assert stats.io.timestamp == 42 and stats.io.psi.Some.Total == 9000 and stats.io.psi.Full.Total == 4000


def test_without_psi_the_pressure_messages_stay_unset() -> None:
    stats = v2_stats()
    assert stats.HasField("cpu") and stats.HasField("memory")
    assert not stats.cpu.HasField("psi") and not stats.memory.HasField("psi") and not stats.HasField("io")


def test_a_missing_full_line_leaves_full_unset() -> None:
    stats = v2_stats(**{"cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"})
    assert stats.cpu.psi.HasField("Some") and not stats.cpu.psi.HasField("Full")


def test_v2_swap_usage_and_what_is_left_of_its_limit() -> None:
    stats = v2_stats(**{"memory.swap.current": f"{MiB}\n", "memory.swap.max": f"{4 * MiB}\n"})
    assert stats.swap.timestamp == 42
    assert (stats.swap.swap_usage_bytes.value, stats.swap.swap_available_bytes.value) == (MiB, 3 * MiB)


def test_v2_unlimited_swap_has_no_available_figure() -> None:
    stats = v2_stats(**{"memory.swap.current": "0\n", "memory.swap.max": "max\n"})
    assert stats.swap.HasField("swap_usage_bytes") and not stats.swap.HasField("swap_available_bytes")


def v1_swap(memory_stat: str, memsw_limit: str) -> tuple[int | None, int | None]:
    """(swap used, swap limit) of a v1 cgroup whose memory limit is 64 MiB."""
    cgroup = stats_v1(
        cpuacct_usage="1\n",
        memory_usage="8192\n",
        memory_limit=f"{64 * MiB}\n",
        memory_stat=memory_stat,
        pids_current="1\n",
        timestamp_ns=1,
        memsw_limit=memsw_limit,
    )
    return cgroup.swap_usage, cgroup.swap_limit


def test_no_swap_accounting_leaves_swap_unset() -> None:
    assert not v2_stats().HasField("swap")
    assert v1_swap("total_rss 4096\n", "") == (None, None)


def test_v1_swap_is_memory_plus_swap_less_memory() -> None:
    assert v1_swap(V1_MEMORY_STAT, f"{96 * MiB}\n") == (MiB, 32 * MiB)
    assert v1_swap(V1_MEMORY_STAT, "9223372036854771712\n") == (MiB, None)


# ---- the readers on generated trees ----


def container_in_tree(tmp_path: Path, version: str, driver: str) -> tuple[Tree, CgroupManager, str]:
    """A generated tree holding one filled container cgroup; the tree, a manager and the cgroupsPath."""
    tree = Tree(tmp_path / "sys-fs-cgroup", version)
    cgroups = manager_for(driver, tree, FakeSystemd(tree.layout))
    path = cgroups.container_path(KUBELET_PARENT[driver], "c0ffee")
    tree.fill(cgroups.directory(path), pids=(41,))
    return tree, cgroups, path


def write_pressure(mount: Path, directory: PurePosixPath) -> None:
    (mount / directory).mkdir(parents=True, exist_ok=True)
    for name, text in PRESSURE_FILES.items():
        (mount / directory / name).write_text(text)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_each_host_reads_pressure_where_its_cgroup2_tree_keeps_it(tmp_path: Path, version: str, driver: str) -> None:
    """v2: the cgroup's own directory; hybrid: its twin in the cgroup2 tree; v1: none at all."""
    tree, cgroups, path = container_in_tree(tmp_path, version, driver)
    directory = cgroups.directory(path)
    cgroup2 = tree.layout.unified or tree.layout.hybrid_unified
    if cgroup2 is not None:
        write_pressure(cgroup2, directory)

    stats = cgroups.read_stats(path)

    if tree.version == "v1":
        assert stats.pressure == {}
    else:
        assert set(stats.pressure) == {"cpu", "memory", "io"}
        assert stats.pressure["memory"].full == PsiData(6.0, 2.0, 0.5, 300)


@pytest.mark.parametrize("version", VERSIONS)
def test_no_pressure_files_read_as_no_pressure(tmp_path: Path, version: str) -> None:
    """A v2 kernel booted with psi=0 writes no pressure files; a hybrid cgroup may have no twin in
    the cgroup2 tree (one pycri did not make)."""
    tree, cgroups, path = container_in_tree(tmp_path, version, "cgroupfs")
    directory = cgroups.directory(path)
    if tree.layout.unified is not None:
        (tree.layout.unified / directory / "cpu.pressure").unlink()

    assert cgroups.read_stats(path).pressure == {}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_swap_read_from_each_tree(tmp_path: Path, version: str, driver: str) -> None:
    tree, cgroups, path = container_in_tree(tmp_path, version, driver)
    directory = cgroups.directory(path)
    if tree.version == "v2":
        assert cgroups.read_stats(path).swap_usage is None  # no memory.swap.* files: no swap accounting
        tree.write("", directory, {"memory.swap.current": f"{MiB}\n", "memory.swap.max": f"{2 * MiB}\n"})
    else:
        tree.write(
            "memory",
            directory,
            {"memory.stat": V1_MEMORY_STAT, "memory.memsw.limit_in_bytes": f"{66 * MiB}\n"},  # memory: 64 MiB
        )

    stats = cgroups.read_stats(path)

    assert (stats.swap_usage, stats.swap_limit) == (MiB, 2 * MiB)
