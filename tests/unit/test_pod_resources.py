"""Pod-level resources: the pod cgroup limits made from CRI figures, their checks, and both
drivers writing them into generated v1, hybrid and v2 trees, all or nothing."""

from __future__ import annotations

import errno
import re
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.cgroups import CgroupLimits, CgroupManager, LimitError
from pycri.cgroups.limits import FileWrite, shares_to_weight
from pycri.cgroups.tree import make
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound
from pycri.sandbox.resources import pod_limits
from pycri.state.sandboxes import SandboxRecord, SandboxState, resources_updated
from tests.support.fakes import FakeNode, build
from tests.unit.test_cgroups_manager import DRIVERS, SANDBOX, VERSIONS, FakeSystemd, Tree, manager_for
from tests.unit.test_services import pod_config

pytestmark = pytest.mark.unit

MiB = 1 << 20
V1_UNLIMITED_BYTES = "9223372036854771712"
Resources = api_pb2.LinuxContainerResources


# ---- CRI figures to limits ----


def test_resources_and_overhead_add_up() -> None:
    overhead = Resources(cpu_shares=100, cpu_quota=10_000, cpu_period=100_000, memory_limit_in_bytes=32 * MiB)
    resources = Resources(cpu_shares=512, cpu_quota=50_000, cpu_period=100_000, memory_limit_in_bytes=256 * MiB)

    limits = pod_limits(overhead, resources)

    assert limits == CgroupLimits(
        cpu_shares=612, cpu_quota_us=60_000, cpu_period_us=100_000, memory=288 * MiB, memory_swap=288 * MiB
    )


def test_nothing_given_is_no_limit_at_all() -> None:
    assert pod_limits(None, None) == CgroupLimits()
    assert pod_limits(Resources(), Resources()) == CgroupLimits()


def test_overhead_alone_limits_neither_cpu_time_nor_memory() -> None:
    """As kubelet sizes a pod whose containers set no limits: the overhead adds to the shares only."""
    limits = pod_limits(Resources(cpu_shares=100, cpu_quota=10_000, memory_limit_in_bytes=MiB), None)
    assert limits == CgroupLimits(cpu_shares=100)


def test_the_overhead_quota_is_scaled_to_the_pod_period() -> None:
    overhead = Resources(cpu_quota=5_000, cpu_period=50_000)
    limits = pod_limits(overhead, Resources(cpu_quota=20_000, cpu_period=200_000))
    assert (limits.cpu_quota_us, limits.cpu_period_us) == (40_000, 200_000)


def test_swap_follows_the_memory_limit_unless_given() -> None:
    assert pod_limits(None, Resources(memory_limit_in_bytes=MiB, memory_swap_limit_in_bytes=-1)).memory_swap is None
    overhead = Resources(memory_limit_in_bytes=MiB)
    limits = pod_limits(overhead, Resources(memory_limit_in_bytes=2 * MiB, memory_swap_limit_in_bytes=4 * MiB))
    assert (limits.memory, limits.memory_swap) == (3 * MiB, 5 * MiB)


def test_hugepages_add_up_and_unified_files_merge() -> None:
    overhead = Resources(hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=2 * MiB)], unified={"a.b": "1"})
    resources = Resources(
        hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4 * MiB)],
        unified={"a.b": "2", "memory.high": "max"},
        cpuset_cpus="0",
    )
    limits = pod_limits(overhead, resources)
    assert limits.hugepages == {"2MB": 6 * MiB} and limits.unified == {"a.b": "2", "memory.high": "max"}
    assert (limits.cpuset_cpus, limits.cpuset_mems) == ("0", "")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"cpu_period": 999}, "resources.cpu_period"),
        ({"cpu_period": 1_000_001}, "resources.cpu_period"),
        ({"cpu_quota": -2}, "resources.cpu_quota"),
        ({"cpu_quota": 999}, "resources.cpu_quota"),
        ({"cpu_shares": 1}, "resources.cpu_shares"),
        ({"cpu_shares": 262145}, "resources.cpu_shares"),
        ({"memory_limit_in_bytes": -1}, "resources.memory_limit_in_bytes"),
        ({"memory_swap_limit_in_bytes": -2}, "resources.memory_swap_limit_in_bytes"),
        ({"memory_swap_limit_in_bytes": MiB}, "resources.memory_swap_limit_in_bytes"),
        ({"memory_limit_in_bytes": 2 * MiB, "memory_swap_limit_in_bytes": MiB}, "resources.memory_swap_limit_in_bytes"),
        ({"oom_score_adj": 1001}, "resources.oom_score_adj"),
        ({"cpuset_cpus": "0-"}, "resources.cpuset_cpus"),
        ({"cpuset_mems": "3-1"}, "resources.cpuset_mems"),
        ({"hugepage_limits": [api_pb2.HugepageLimit(page_size="2M")]}, "resources.hugepage_limits[0].page_size"),
        (
            {"hugepage_limits": [api_pb2.HugepageLimit(page_size="2MB")] * 2},
            "resources.hugepage_limits[1].page_size",
        ),
        ({"unified": {"cgroup.procs": "1"}}, "resources.unified['cgroup.procs']"),
        ({"unified": {"../etc": "1"}}, "resources.unified['../etc']"),
        ({"unified": {"memory.high": "1\n2"}}, "resources.unified['memory.high']"),
    ],
)
def test_bad_figures_are_refused_by_name(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{re.escape(named)}: "):
        pod_limits(None, Resources(**fields))
    with pytest.raises(InvalidArgument, match=r"^config\.linux\.overhead\."):
        pod_limits(Resources(**fields), None, "config.linux.")


int64 = st.integers(-(2**63), 2**63 - 1)


@given(
    st.builds(
        Resources,
        cpu_period=int64,
        cpu_quota=int64,
        cpu_shares=int64,
        memory_limit_in_bytes=int64,
        memory_swap_limit_in_bytes=int64,
        oom_score_adj=int64,
        cpuset_cpus=st.text(max_size=12),
        unified=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=2),
    ),
    st.builds(Resources, cpu_shares=st.just(0) | st.integers(2, 262144), memory_limit_in_bytes=st.integers(0, 2**40)),
)
def test_any_figures_give_limits_or_a_named_refusal(resources: Resources, overhead: Resources) -> None:
    """Whatever the resources say (the overhead here is a good one)."""
    try:
        limits = pod_limits(overhead, resources)
    except InvalidArgument as exc:
        assert str(exc).startswith("resources.")
        return
    assert limits.cpu_shares is None or 2 <= limits.cpu_shares <= 262144
    assert limits.memory is None or limits.memory_swap is None or limits.memory <= limits.memory_swap


# ---- writing them ----


def kernel_files(tree: Tree, directory: PurePosixPath) -> None:
    """What the kernel shows in a new cgroup with the controllers on (pure files here)."""
    if tree.version == "v2":
        tree.write(
            "",
            directory,
            {
                "cpu.weight": "100\n",
                "cpu.max": "max 100000\n",
                "cpuset.cpus": "\n",
                "cpuset.mems": "\n",
                "memory.max": "max\n",
                "memory.swap.max": "max\n",
                "hugetlb.2MB.max": "max\n",
            },
        )
        return
    tree.write("cpu", directory, {"cpu.shares": "1024\n", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n"})
    unlimited = f"{V1_UNLIMITED_BYTES}\n"
    tree.write("memory", directory, {"memory.limit_in_bytes": unlimited, "memory.memsw.limit_in_bytes": unlimited})


def pod_in_tree(tmp_path: Path, version: str, driver: str) -> tuple[Tree, CgroupManager, str]:
    """pycri's own pod cgroup in a generated tree (its slice started, under systemd)."""
    tree = Tree(tmp_path / "sys-fs-cgroup", version)
    cgroups = manager_for(driver, tree, FakeSystemd(tree.layout))
    pod = cgroups.pod_parent("", SANDBOX)
    cgroups.create_pod_parent(pod)
    kernel_files(tree, cgroups.directory(pod))
    return tree, cgroups, pod


def read(tree: Tree, controller: str, directory: PurePosixPath, name: str) -> str:
    mount = tree.layout.unified or tree.layout.v1[controller]
    return (mount / directory / name).read_text().strip()


LIMITS = CgroupLimits(
    cpu_shares=512, cpu_quota_us=50_000, cpu_period_us=100_000, cpuset_cpus="1", memory=64 * MiB, memory_swap=96 * MiB
)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_limits_land_in_each_hierarchy(tmp_path: Path, version: str, driver: str) -> None:
    tree, cgroups, pod = pod_in_tree(tmp_path, version, driver)
    directory = cgroups.directory(pod)

    skipped = cgroups.set_limits(pod, LIMITS)

    if version == "v2":
        assert read(tree, "", directory, "cpu.weight") == str(shares_to_weight(512))
        assert read(tree, "", directory, "cpu.max") == "50000 100000"
        assert read(tree, "", directory, "cpuset.cpus") == "1"
        assert read(tree, "", directory, "memory.max") == str(64 * MiB)
        assert read(tree, "", directory, "memory.swap.max") == str(32 * MiB)  # v2 limits swap alone
        assert read(tree, "", directory, "hugetlb.2MB.max") == "max"
    else:
        assert read(tree, "cpu", directory, "cpu.shares") == "512"
        assert read(tree, "cpu", directory, "cpu.cfs_quota_us") == "50000"
        assert read(tree, "cpuset", directory, "cpuset.cpus") == "1"
        assert read(tree, "cpuset", directory, "cpuset.mems") == "0"  # the parent's
        assert read(tree, "memory", directory, "memory.limit_in_bytes") == str(64 * MiB)
        assert read(tree, "memory", directory, "memory.memsw.limit_in_bytes") == str(96 * MiB)
    assert skipped == []


@pytest.mark.parametrize("version", VERSIONS)
def test_no_limits_put_every_file_back_to_none(tmp_path: Path, version: str) -> None:
    tree, cgroups, pod = pod_in_tree(tmp_path, version, "cgroupfs")
    directory = cgroups.directory(pod)
    cgroups.set_limits(pod, LIMITS)

    cgroups.set_limits(pod, CgroupLimits())

    if version == "v2":
        assert read(tree, "", directory, "cpu.max") == "max 100000"
        assert read(tree, "", directory, "memory.max") == "max"
        assert read(tree, "", directory, "cpuset.cpus") == ""  # inherits
    else:
        assert read(tree, "cpu", directory, "cpu.shares") == "1024"
        assert read(tree, "cpu", directory, "cpu.cfs_quota_us") == "-1"
        assert read(tree, "memory", directory, "memory.limit_in_bytes") == "-1"
        assert read(tree, "cpuset", directory, "cpuset.cpus") == "0-1"


def test_v1_memory_and_memsw_are_ordered_so_the_kernel_takes_them(tmp_path: Path) -> None:
    """The kernel keeps memory <= memory+swap at every write: raising, memsw goes first."""
    tree, cgroups, pod = pod_in_tree(tmp_path, "v1", "cgroupfs")
    memory = tree.layout.v1["memory"] / cgroups.directory(pod)
    written: list[str] = []
    real_write = Path.write_text

    def watch(path: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if path.parent == memory:
            written.append(path.name)
        return real_write(path, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "write_text", watch)
        cgroups.set_limits(pod, CgroupLimits(memory=64 * MiB, memory_swap=64 * MiB))
        lowered = list(written)
        written.clear()
        cgroups.set_limits(pod, CgroupLimits(memory=128 * MiB, memory_swap=128 * MiB))

    assert lowered == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert written == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refused_write_puts_back_what_was_written(tmp_path: Path, version: str) -> None:
    tree, cgroups, pod = pod_in_tree(tmp_path, version, "cgroupfs")
    directory = cgroups.directory(pod)
    refused_file = "memory.max" if version == "v2" else "memory.limit_in_bytes"
    cpu_file = "cpu.max" if version == "v2" else "cpu.cfs_quota_us"
    before = read(tree, "cpu", directory, cpu_file)
    real_write = Path.write_text

    def kernel(path: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if path.name == refused_file:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_write(path, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "write_text", kernel)
        with pytest.raises(LimitError) as refused:
            cgroups.set_limits(pod, LIMITS)

    assert (refused.value.setting, refused.value.errno) == ("memory", errno.EBUSY)
    assert read(tree, "cpu", directory, cpu_file) == before


def test_v2_unified_files_are_written_last_and_must_exist(tmp_path: Path) -> None:
    tree, cgroups, pod = pod_in_tree(tmp_path, "v2", "cgroupfs")
    directory = cgroups.directory(pod)
    tree.write("", directory, {"memory.high": "max\n"})

    cgroups.set_limits(pod, CgroupLimits(memory=64 * MiB, unified={"memory.high": str(32 * MiB)}))
    assert read(tree, "", directory, "memory.high") == str(32 * MiB)

    with pytest.raises(LimitError) as unknown:
        cgroups.set_limits(pod, CgroupLimits(memory=MiB, unified={"memory.nosuch": "1"}))
    assert unknown.value.setting == "unified[memory.nosuch]"
    assert read(tree, "", directory, "memory.max") == str(64 * MiB)


@pytest.mark.parametrize("version", ("v1", "hybrid"))
def test_what_a_v1_host_cannot_set_is_reported_skipped(tmp_path: Path, version: str) -> None:
    tree, cgroups, pod = pod_in_tree(tmp_path, version, "cgroupfs")
    (tree.layout.v1["memory"] / cgroups.directory(pod) / "memory.memsw.limit_in_bytes").unlink()  # swapaccount=0

    skipped = cgroups.set_limits(
        pod, CgroupLimits(memory=MiB, memory_swap=2 * MiB, hugepages={"2MB": MiB}, unified={"memory.high": "1"})
    )

    assert skipped == ["memory_swap", "hugepages", "unified"]


def test_a_new_v2_cgroup_gets_the_controllers_of_the_levels_above(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "sys-fs-cgroup", "v2")
    (tree.root / "cgroup.controllers").write_text("cpuset cpu memory\n")
    (tree.root / "cgroup.subtree_control").write_text("cpu\n")

    make(tree.layout, PurePosixPath("pycri/pod-1"))

    assert (tree.root / "cgroup.subtree_control").read_text() == "+cpuset +memory"
    assert (tree.root / "pycri" / "pod-1").is_dir()


# ---- the service ----


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    built = build(tmp_path)
    yield built
    built.db.close()


async def test_a_pod_starts_with_its_limits_and_an_update_changes_them(node: FakeNode) -> None:
    config = pod_config()
    config.linux.resources.CopyFrom(Resources(cpu_shares=256, memory_limit_in_bytes=64 * MiB))
    sandbox_id = await node.sandboxes.run(config, "")
    cgroup = node.sandboxes.get(sandbox_id).cgroup_parent
    assert node.cgroups.limits[cgroup] == CgroupLimits(cpu_shares=256, memory=64 * MiB, memory_swap=64 * MiB)

    overhead = Resources(cpu_shares=10, memory_limit_in_bytes=MiB)
    await node.sandboxes.update_resources(sandbox_id[:12], overhead, Resources(memory_limit_in_bytes=128 * MiB))

    assert node.cgroups.limits[cgroup] == CgroupLimits(cpu_shares=10, memory=129 * MiB, memory_swap=129 * MiB)
    linux = node.sandboxes.get(sandbox_id).config.linux
    assert (linux.overhead, linux.resources) == (overhead, Resources(memory_limit_in_bytes=128 * MiB))
    row = node.db.query("SELECT config FROM sandboxes WHERE id = ?", (sandbox_id,))[0]
    assert api_pb2.PodSandboxConfig.FromString(row["config"]).linux.overhead == overhead


async def test_a_pod_without_figures_gets_no_limits_written(node: FakeNode) -> None:
    await node.sandboxes.run(pod_config(), "")
    assert node.cgroups.limits == {}


async def test_unknown_pods_and_bad_figures_change_nothing(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    before = node.sandboxes.get(sandbox_id)

    with pytest.raises(NotFound):
        await node.sandboxes.update_resources("feedface", None, Resources(cpu_shares=2))
    with pytest.raises(InvalidArgument, match=r"^resources\.cpu_quota: "):
        await node.sandboxes.update_resources(sandbox_id, None, Resources(cpu_quota=5))
    with pytest.raises(InvalidArgument, match=r"^config\.linux\.resources\.memory_limit_in_bytes: "):
        bad = pod_config("bad")
        bad.linux.resources.memory_limit_in_bytes = -1
        await node.sandboxes.run(bad, "")

    assert node.sandboxes.get(sandbox_id) == before and node.cgroups.limits == {}
    assert node.rows("sandboxes") == 1


async def test_a_refusal_from_the_kernel_keeps_the_record(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")

    def busy(cgroups_path: str, limits: CgroupLimits) -> list[str]:
        write = FileWrite(Path("memory.limit_in_bytes"), str(MiB), "memory")
        raise LimitError(write, errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(node.cgroups, "set_limits", busy)
    with pytest.raises(FailedPrecondition, match=r"^resources\.memory_limit_in_bytes \(with the overhead\)"):
        await node.sandboxes.update_resources(sandbox_id, None, Resources(memory_limit_in_bytes=MiB))

    assert not node.sandboxes.get(sandbox_id).config.linux.HasField("resources")


async def test_kubelet_cgroups_and_stopped_pods_are_recorded_only(node: FakeNode) -> None:
    kubelet_pod = pod_config("kubelet")
    kubelet_pod.linux.cgroup_parent = "/kubepods/burstable/pod1"
    kubelet_id = await node.sandboxes.run(kubelet_pod, "")
    stopped_id = await node.sandboxes.run(pod_config("stopped"), "")
    await node.sandboxes.stop(stopped_id)

    for sandbox_id in (kubelet_id, stopped_id):
        await node.sandboxes.update_resources(sandbox_id, None, Resources(cpu_shares=512))
        assert node.sandboxes.get(sandbox_id).config.linux.resources.cpu_shares == 512

    assert node.cgroups.limits == {}


def test_a_field_left_out_of_an_update_is_cleared() -> None:
    record_config = pod_config()
    record_config.linux.overhead.cpu_shares = 10
    record = SandboxRecord("id", record_config, "", 0, SandboxState.READY, Path("/r"), Path("/s"), "/pycri/pod-id", "")
    updated = resources_updated(record, None, Resources(memory_limit_in_bytes=MiB))

    assert not updated.config.linux.HasField("overhead")
    assert updated.config.linux.resources.memory_limit_in_bytes == MiB
    assert record.config.linux.overhead.cpu_shares == 10  # records are immutable: the old one is untouched
