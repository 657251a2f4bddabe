"""cgroup file parsers and the v1/v2 layout detection, on recorded file contents."""

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.cgroups.layout import CgroupLayout, parse_mountinfo
from pycri.cgroups.usage import parse_int, parse_keyed, parse_limit, stats_v1, stats_v2, working_set

pytestmark = pytest.mark.unit

HYBRID_MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,relatime shared:8 - tmpfs tmpfs rw,mode=755
27 26 0:25 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
28 26 0:26 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
29 26 0:27 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
30 26 0:28 / /sys/fs/cgroup/pids rw,relatime shared:12 - cgroup cgroup rw,pids
31 26 0:29 / /sys/fs/cgroup/systemd rw,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
32 26 0:30 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
"""

COMOUNTED_MOUNTINFO = """\
33 26 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
34 26 0:32 / /sys/fs/cgroup/net\\040cls rw,nosuid shared:16 - cgroup cgroup rw,net_cls,net_prio
"""

PURE_V2_MOUNTINFO = """\
35 24 0:33 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
36 24 0:34 / /sys/fs/cgroup/systemd-only rw,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
"""

V1_MEMORY_STAT = """\
cache 4096
rss 8192
mapped_file 0
pgfault 10
pgmajfault 1
inactive_file 4096
total_cache 40960
total_rss 81920
total_pgfault 100
total_pgmajfault 3
total_inactive_file 20480
"""

V2_MEMORY_STAT = """\
anon 1048576
file 2097152
inactive_file 524288
active_file 1572864
pgfault 4242
pgmajfault 7
"""


def test_hybrid_host_is_v1_with_every_hierarchy() -> None:
    layout = parse_mountinfo(HYBRID_MOUNTINFO)

    assert layout.unified is None
    assert layout.hybrid_unified == Path("/sys/fs/cgroup/unified")
    assert layout.v1 == {
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "cpuacct": Path("/sys/fs/cgroup/cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids"),
        "name=systemd": Path("/sys/fs/cgroup/systemd"),
    }
    assert Path("/sys/fs/cgroup/unified/pod/ctr") in layout.hierarchy_dirs(PurePosixPath("pod/ctr"))


def test_comounted_controllers_share_a_mount_and_escapes_are_decoded() -> None:
    layout = parse_mountinfo(COMOUNTED_MOUNTINFO)

    assert layout.v1["cpu"] == layout.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.v1["net_prio"] == Path("/sys/fs/cgroup/net cls")
    assert layout.hierarchy_dirs(PurePosixPath("a/b")) == [
        Path("/sys/fs/cgroup/cpu,cpuacct/a/b"),
        Path("/sys/fs/cgroup/net cls/a/b"),
    ]


def test_pure_v2_host_ignores_named_v1_hierarchies() -> None:
    layout = parse_mountinfo(PURE_V2_MOUNTINFO)

    assert layout == CgroupLayout(unified=Path("/sys/fs/cgroup"))
    assert layout.hierarchy_dirs(PurePosixPath("pycri/pod/ctr")) == [Path("/sys/fs/cgroup/pycri/pod/ctr")]


@pytest.mark.parametrize("bad_directory", ["/", "/pycri/pod", "a/../../etc", ".."])
def test_hierarchy_directories_must_be_relative_and_contained(bad_directory: str) -> None:
    with pytest.raises(ValueError):
        CgroupLayout(unified=Path("/sys/fs/cgroup")).hierarchy_dirs(PurePosixPath(bad_directory))


def test_v1_stats_use_hierarchical_totals() -> None:
    stats = stats_v1(
        cpuacct_usage="123456789\n",
        memory_usage="1048576\n",
        memory_limit="9223372036854771712\n",
        memory_stat=V1_MEMORY_STAT,
        pids_current="3\n",
        timestamp_ns=5,
    )

    assert stats.cpu_usage_ns == 123456789
    assert stats.memory_usage == 1048576
    assert stats.memory_working_set == 1048576 - 20480
    assert stats.memory_rss == 81920
    assert stats.memory_limit is None
    assert (stats.page_faults, stats.major_page_faults) == (100, 3)
    assert stats.pids == 3
    assert stats.timestamp_ns == 5


def test_v1_stats_without_totals_or_optional_files() -> None:
    stats = stats_v1(
        cpuacct_usage="",
        memory_usage="8192",
        memory_limit="67108864",
        memory_stat="rss 4096\ninactive_file 16384\n",
        pids_current="",
        timestamp_ns=1,
    )

    assert stats.cpu_usage_ns == 0
    assert stats.memory_working_set == 0  # inactive file pages above usage clamp to zero
    assert stats.memory_rss == 4096
    assert stats.memory_limit == 67108864
    assert stats.pids == 0


def test_v2_stats() -> None:
    stats = stats_v2(
        cpu_stat="usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        memory_current="4194304\n",
        memory_max="max\n",
        memory_stat=V2_MEMORY_STAT,
        pids_current="2\n",
        timestamp_ns=9,
    )

    assert stats.cpu_usage_ns == 2_500_000
    assert stats.memory_usage == 4194304
    assert stats.memory_working_set == 4194304 - 524288
    assert stats.memory_rss == 1048576
    assert stats.memory_limit is None
    assert (stats.page_faults, stats.major_page_faults) == (4242, 7)
    assert stats.pids == 2


@pytest.mark.parametrize(
    ("text", "limit"), [("max\n", None), ("", None), ("1048576\n", 1048576), ("9223372036854771712", None)]
)
def test_parse_limit(text: str, limit: int | None) -> None:
    assert parse_limit(text) == limit


def test_parse_int() -> None:
    assert parse_int(" 42\n") == 42
    assert parse_int("") == 0


keys = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@given(st.dictionaries(keys, st.integers(min_value=-(2**63), max_value=2**64)))
def test_parse_keyed_round_trips(values: dict[str, int]) -> None:
    text = "".join(f"{key} {value}\n" for key, value in values.items())

    assert parse_keyed(text) == values


@given(st.text() | st.text(alphabet="-0123456789 \n\t²١ab"))
def test_parse_keyed_never_raises_on_garbage(text: str) -> None:
    parsed = parse_keyed(text)

    assert all(isinstance(value, int) for value in parsed.values())


@given(st.text())
def test_parse_mountinfo_never_raises_on_garbage(text: str) -> None:
    assert isinstance(parse_mountinfo(text), CgroupLayout)


@given(st.integers(min_value=0, max_value=2**62), st.integers(min_value=0, max_value=2**62))
def test_working_set_is_within_usage(usage: int, inactive_file: int) -> None:
    assert 0 <= working_set(usage, inactive_file) <= usage
