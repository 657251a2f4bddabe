"""The cgroup detail parsers (v1 and v2) on recorded file contents, and the /proc counting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.cgroups.details import (
    DeviceIo,
    HugetlbUsage,
    details_v1,
    details_v2,
    parse_blkio_v1,
    parse_hugetlb,
    parse_io_stat,
    parse_open_files_soft_limit,
    process_counts,
    weight_to_shares,
)

pytestmark = pytest.mark.unit

UNLIMITED_V1 = "9223372036854771712\n"

V1_FILES = {
    "cpuacct.usage_user": "1900000000\n",
    "cpuacct.usage_sys": "600000000\n",
    "cpu.stat": "nr_periods 40\nnr_throttled 7\nthrottled_time 3000000000\nnr_bursts 0\nburst_time 0\n",
    "cpu.cfs_period_us": "100000\n",
    "cpu.cfs_quota_us": "20000\n",
    "cpu.shares": "512\n",
    "memory.stat": (
        "cache 4096\nrss 8192\nmapped_file 1024\npgfault 10\npgmajfault 1\nswap 0\n"
        "total_cache 40960\ntotal_rss 81920\ntotal_mapped_file 2048\ntotal_swap 512\n"
        "total_pgfault 100\ntotal_pgmajfault 3\n"
    ),
    "memory.kmem.usage_in_bytes": "65536\n",
    "memory.failcnt": "4\n",
    "memory.max_usage_in_bytes": "1048576\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "memory.limit_in_bytes": "67108864\n",
    "memory.soft_limit_in_bytes": UNLIMITED_V1,
    "memory.memsw.limit_in_bytes": "134217728\n",
    "pids.max": "max\n",
    "blkio.throttle.io_service_bytes_recursive": "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n"
    "254:0 Async 12288\n254:0 Discard 0\n254:0 Total 12288\nTotal 12288\n",
    "blkio.throttle.io_serviced_recursive": "254:0 Read 1\n254:0 Write 2\n254:0 Total 3\nTotal 3\n",
    "hugetlb.2MB.usage_in_bytes": "2097152\n",
    "hugetlb.2MB.max_usage_in_bytes": "4194304\n",
}

V2_FILES = {
    "cpu.stat": (
        "usage_usec 2500000\nuser_usec 1900000\nsystem_usec 600000\nnr_periods 40\nnr_throttled 7\n"
        "throttled_usec 3000000\n"
    ),
    "cpu.max": "20000 100000\n",
    "cpu.weight": "100\n",
    "memory.stat": "anon 81920\nfile 40960\nkernel 65536\nfile_mapped 2048\npgfault 100\npgmajfault 3\n",
    "memory.swap.current": "512\n",
    "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 0\n",
    "memory.peak": "1048576\n",
    "memory.max": "67108864\n",
    "memory.low": "0\n",
    "memory.swap.max": "max\n",
    "pids.max": "256\n",
    "io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    "hugetlb.2MB.current": "2097152\n",
    "hugetlb.2MB.rsvd.current": "0\n",
}


def test_v1_details() -> None:
    details = details_v1(V1_FILES, pids=[7, 8])
    assert (details.cpu.user_ns, details.cpu.system_ns) == (1_900_000_000, 600_000_000)
    assert (details.cpu.periods, details.cpu.throttled_periods, details.cpu.throttled_ns) == (40, 7, 3_000_000_000)
    memory = details.memory
    assert (memory.cache, memory.mapped_file, memory.swap, memory.kernel) == (40960, 2048, 512, 65536)
    assert (memory.failcnt, memory.max_usage, memory.oom_kills) == (4, 1048576, 2)
    assert (memory.local_page_faults, memory.local_major_page_faults) == (10, 1)
    limits = details.limits
    assert (limits.cpu_period_us, limits.cpu_quota_us, limits.cpu_shares) == (100_000, 20_000, 512)
    assert (limits.memory, limits.memory_reservation, limits.memory_swap, limits.pids) == (
        64 << 20,
        None,
        128 << 20,
        None,
    )
    assert details.io == (DeviceIo(254, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),)
    assert details.hugetlb == (HugetlbUsage("2MB", 2 << 20, 4 << 20),)
    assert details.pids == (7, 8)


def test_v2_details() -> None:
    details = details_v2(V2_FILES)
    assert (details.cpu.user_ns, details.cpu.system_ns, details.cpu.throttled_ns) == (1.9e9, 0.6e9, 3e9)
    memory = details.memory
    assert (memory.cache, memory.mapped_file, memory.swap, memory.kernel) == (40960, 2048, 512, 65536)
    assert (memory.failcnt, memory.max_usage, memory.oom_kills) == (4, 1048576, 2)
    limits = details.limits
    assert (limits.cpu_period_us, limits.cpu_quota_us, limits.cpu_shares) == (100_000, 20_000, weight_to_shares(100))
    assert (limits.memory, limits.memory_reservation, limits.memory_swap, limits.pids) == (64 << 20, None, None, 256)
    assert details.io == (DeviceIo(254, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),)
    assert details.hugetlb == (HugetlbUsage("2MB", 2 << 20, None),)


def test_v1_unlimited_quota_and_missing_files() -> None:
    details = details_v1({"cpu.cfs_quota_us": "-1\n"})
    assert details.limits.cpu_quota_us is None and details.limits.cpu_period_us == 100_000
    assert details.io == () and details.hugetlb == ()


def test_v2_kernel_memory_before_the_kernel_total() -> None:
    stat = "anon 1\nkernel_stack 16384\npagetables 8192\npercpu 0\nsock 4096\nvmalloc 0\nslab 32768\n"
    assert details_v2({"memory.stat": stat}).memory.kernel == 16384 + 8192 + 4096 + 32768


def test_v2_unlimited_cpu_and_defaults() -> None:
    details = details_v2({"cpu.max": "max 100000\n"})
    assert details.limits.cpu_quota_us is None and details.limits.cpu_period_us == 100_000
    assert details_v2({}).limits.cpu_shares == weight_to_shares(100)


def runc_weight(shares: int) -> int:
    return 1 + (shares - 2) * 9999 // 262142


@given(st.integers(min_value=1, max_value=10000))
def test_a_weight_maps_back_to_the_shares_runc_made_it_from(weight: int) -> None:
    shares = weight_to_shares(weight)
    assert runc_weight(shares) == weight and (shares == 2 or runc_weight(shares - 1) < weight)


def test_hugetlb_ignores_reservations_and_other_files() -> None:
    files = {
        "hugetlb.1GB.current": "0\n",
        "hugetlb.1GB.rsvd.current": "5\n",
        "memory.stat": "x 1",
        "hugetlb.2MB.max": "",
    }
    assert parse_hugetlb(files) == (HugetlbUsage("1GB", 0, None),)


def test_blkio_sums_per_device() -> None:
    found = parse_blkio_v1("8:0 Read 10\n8:16 Write 20\nTotal 30\n", "8:0 Read 1\n8:16 Write 2\n")
    assert found == (DeviceIo(8, 0, read_bytes=10, reads=1), DeviceIo(8, 16, write_bytes=20, writes=2))


@given(st.text())
def test_parsers_of_structured_files_take_any_text(text: str) -> None:
    parse_blkio_v1(text, text)
    parse_io_stat(text)
    parse_open_files_soft_limit(text)
    keyed = ("cpu.stat", "memory.stat", "memory.events", "memory.oom_control", "io.stat")
    details_v1(dict.fromkeys(keyed, text))
    details_v2(dict.fromkeys(keyed, text))


@given(
    st.lists(
        st.tuples(st.integers(0, 4095), st.integers(0, 2**20), *[st.integers(0, 2**63)] * 4),
        unique_by=lambda row: row[:2],
    )
)
def test_io_stat_round_trip(rows: list[tuple[int, ...]]) -> None:
    text = "".join(f"{a}:{b} rbytes={c} wbytes={d} rios={e} wios={f} dbytes=0 dios=0\n" for a, b, c, d, e, f in rows)
    assert parse_io_stat(text) == tuple(DeviceIo(*row) for row in rows)


def test_open_files_soft_limit() -> None:
    limits = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            1024                 524288               files     \n"
    )
    assert parse_open_files_soft_limit(limits) == 1024
    assert parse_open_files_soft_limit(limits.replace("1024 ", "unlimited")) is None
    assert parse_open_files_soft_limit("") is None


def test_process_counts_read_fd_links(tmp_path: Path) -> None:
    for pid, targets in {"10": ["/dev/null", "socket:[123]", "pipe:[9]"], "11": ["socket:[124]"]}.items():
        fd_dir = tmp_path / pid / "fd"
        fd_dir.mkdir(parents=True)
        for number, target in enumerate(targets):
            os.symlink(target, fd_dir / str(number))
    assert process_counts([10, 11, 12], proc=tmp_path) == process_counts([11, 10], proc=tmp_path)
    counts = process_counts([10, 11, 12], proc=tmp_path)
    assert (counts.file_descriptors, counts.sockets) == (4, 2)
