"""Plugins' container adjustments applied to an OCI spec dict, conflicts between plugins, refusals,
and NRI resources turned into CRI ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.nri import convert
from pycri.nri.adaptation import SyncGate
from pycri.nri.adjust import AdjustmentError, SpecAdjuster, UserNamespaceConflict
from pycri.nri.pb import api_pb2 as nri

pytestmark = pytest.mark.unit


def base_spec() -> dict[str, Any]:
    return {
        "process": {"args": ["sleep", "1"], "env": ["PATH=/bin", "KEEP=1", "DROP=1"], "oomScoreAdj": 0},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": {"io.kubernetes.cri.container-type": "container"},
        "linux": {"resources": {"memory": {"limit": 1 << 30}}, "namespaces": [{"type": "pid"}]},
    }


def test_every_supported_field_reaches_the_spec() -> None:
    adjust = nri.ContainerAdjustment(
        annotations={"plugin/a": "1", "-io.kubernetes.cri.container-type": ""},
        env=[nri.KeyValue(key="NEW", value="v"), nri.KeyValue(key="KEEP", value="2"), nri.KeyValue(key="-DROP")],
        mounts=[
            nri.Mount(destination="/data/sub", source="/srv/sub", type="bind", options=["rbind"]),
            nri.Mount(destination="/data", source="/srv", type="bind", options=["rbind", "ro"]),
        ],
        rlimits=[nri.POSIXRlimit(type="RLIMIT_NOFILE", hard=10, soft=5)],
        args=["-", "echo", "hi"],
    )
    adjust.hooks.prestart.add(path="/usr/bin/hook", args=["hook", "x"])
    adjust.linux.devices.add(path="/dev/fuse", type="c", major=10, minor=229).file_mode.value = 0o666
    adjust.linux.resources.memory.limit.value = 1 << 20
    adjust.linux.resources.cpu.shares.value = 512
    adjust.linux.resources.cpu.cpus = "0-1"
    adjust.linux.resources.pids.limit = 100
    adjust.linux.resources.hugepage_limits.add(page_size="2MB", limit=4 << 20)
    adjust.linux.resources.unified["memory.high"] = "1000000"
    adjust.linux.cgroups_path = "/plugin/cgroup"
    adjust.linux.oom_score_adj.value = 500
    adjust.linux.sysctl["net.ipv4.ip_forward"] = "1"
    adjust.linux.namespaces.add(type="-pid")
    spec = base_spec()
    adjuster = SpecAdjuster(spec, min_oom_score_adj=-500)
    adjuster.apply("10-test", adjust)

    assert spec["annotations"] == {"plugin/a": "1"}
    assert spec["process"]["env"] == ["PATH=/bin", "KEEP=2", "NEW=v"]
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/data", "/data/sub"]
    assert spec["mounts"][1] == {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]}
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}]
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["hooks"]["prestart"] == [{"path": "/usr/bin/hook", "args": ["hook", "x"]}]
    assert spec["linux"]["devices"] == [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}
    ]
    resources = spec["linux"]["resources"]
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"} in resources["devices"]
    assert resources["memory"] == {"limit": 1 << 20}
    assert resources["cpu"] == {"shares": 512, "cpus": "0-1"}
    assert resources["pids"] == {"limit": 100}
    assert resources["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert resources["unified"] == {"memory.high": "1000000"}
    assert spec["linux"]["cgroupsPath"] == "/plugin/cgroup"
    assert adjuster.cgroups_path == "/plugin/cgroup"
    assert spec["process"]["oomScoreAdj"] == 500
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert spec["linux"]["namespaces"] == []


def test_two_plugins_may_not_set_the_same_thing() -> None:
    adjuster = SpecAdjuster(base_spec(), min_oom_score_adj=0)
    adjuster.apply("10-first", nri.ContainerAdjustment(env=[nri.KeyValue(key="X", value="1")]))
    adjuster.apply("10-first", nri.ContainerAdjustment(env=[nri.KeyValue(key="X", value="2")]))  # its own: fine
    with pytest.raises(AdjustmentError, match="10-first and 20-second both adjust env 'X'"):
        adjuster.apply("20-second", nri.ContainerAdjustment(env=[nri.KeyValue(key="X", value="3")]))


def test_a_removal_mark_lets_another_plugin_take_over() -> None:
    spec = base_spec()
    adjuster = SpecAdjuster(spec, min_oom_score_adj=0)
    adjuster.apply("10-first", nri.ContainerAdjustment(annotations={"k": "1"}))
    adjuster.apply("20-second", nri.ContainerAdjustment(annotations={"-k": "", "k": "2"}))
    assert spec["annotations"]["k"] == "2"


@pytest.mark.parametrize(
    ("adjust", "match"),
    [
        (nri.ContainerAdjustment(CDI_devices=[nri.CDIDevice(name="vendor.com/gpu=0")]), "CDI_devices"),
        (nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(seccomp_policy=nri.LinuxSeccomp())), "seccomp"),
        (
            nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(net_devices={"eth1": nri.LinuxNetDevice()})),
            "net",
        ),
        (nri.ContainerAdjustment(mounts=[nri.Mount(destination="relative", source="/x")]), "not absolute"),
        (nri.ContainerAdjustment(env=[nri.KeyValue(key="A=B", value="x")]), "environment variable"),
        (nri.ContainerAdjustment(rlimits=[nri.POSIXRlimit(type="NOFILE", hard=1, soft=1)]), "rlimit"),
        (nri.ContainerAdjustment(rlimits=[nri.POSIXRlimit(type="RLIMIT_CORE", hard=1, soft=2)]), "rlimit"),
        (nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(cgroups_path="../escape")), "cgroups path"),
        (nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(oom_score_adj=nri.OptionalInt(value=-999))), "oom"),
    ],
)
def test_invalid_or_unsupported_adjustments_are_refused(adjust: nri.ContainerAdjustment, match: str) -> None:
    with pytest.raises(AdjustmentError, match=match):
        SpecAdjuster(base_spec(), min_oom_score_adj=0).apply("10-test", adjust)


def test_blockio_class_is_refused() -> None:
    adjust = nri.ContainerAdjustment()
    adjust.linux.resources.blockio_class.value = "slow"
    with pytest.raises(AdjustmentError, match="blockio_class"):
        SpecAdjuster(base_spec(), min_oom_score_adj=0).apply("10-test", adjust)


@given(
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
    st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5),
    st.lists(st.text(max_size=30), max_size=4),
)
def test_any_adjustment_applies_or_raises_adjustment_error(
    annotations: dict[str, str], env: list[tuple[str, str]], destinations: list[str]
) -> None:
    adjust = nri.ContainerAdjustment(
        annotations=annotations,
        env=[nri.KeyValue(key=k, value=v) for k, v in env],
        mounts=[nri.Mount(destination=d, source="/src") for d in destinations],
    )
    spec = base_spec()
    try:
        SpecAdjuster(spec, min_oom_score_adj=0).apply("10-fuzz", adjust)
    except AdjustmentError:
        return
    assert all("=" in entry for entry in spec["process"]["env"])
    assert all(m["destination"].startswith("/") for m in spec["mounts"])


def test_nri_update_replaces_only_the_fields_it_sets() -> None:
    base = api_pb2.LinuxContainerResources(cpu_shares=2, memory_limit_in_bytes=1 << 30, cpuset_cpus="0")
    update = nri.LinuxResources()
    update.cpu.shares.value = 1024
    update.cpu.mems = "0"
    result = convert.resources_to_cri(update, base)
    assert (result.cpu_shares, result.memory_limit_in_bytes, result.cpuset_cpus, result.cpuset_mems) == (
        1024,
        1 << 30,
        "0",
        "0",
    )
    assert convert.resources_to_cri(convert.resources_from_cri(base), None) == base


def test_oci_resources_as_nri() -> None:
    message = convert.resources_from_oci(
        {"memory": {"limit": 5, "swap": 6}, "cpu": {"quota": 7, "cpus": "1"}, "pids": {"limit": 9}}
    )
    assert (message.memory.limit.value, message.memory.swap.value, message.cpu.quota.value) == (5, 6, 7)
    assert (message.cpu.cpus, message.pids.limit) == ("1", 9)
    assert not message.memory.HasField("reservation")


async def test_sync_gate_waits_for_operations_and_holds_new_ones() -> None:
    gate = SyncGate()
    order: list[str] = []
    operation_may_end = asyncio.Event()

    async def operation(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.operation():
            order.append(f"{name} in")
            if hold is not None:
                await hold.wait()
            order.append(f"{name} out")

    async def synchronization() -> None:
        async with gate.synchronization():
            order.append("sync in")
            await asyncio.sleep(0)
            order.append("sync out")

    first = asyncio.create_task(operation("first", operation_may_end))
    await asyncio.sleep(0)
    sync = asyncio.create_task(synchronization())
    await asyncio.sleep(0)
    late = asyncio.create_task(operation("late"))
    await asyncio.sleep(0)
    assert order == ["first in"]
    operation_may_end.set()
    await asyncio.gather(first, sync, late)
    assert order == ["first in", "first out", "sync in", "sync out", "late in", "late out"]


def test_removing_a_device_takes_its_cgroup_rule_along() -> None:
    spec = base_spec()
    adjuster = SpecAdjuster(spec, min_oom_score_adj=0)
    added = nri.ContainerAdjustment()
    added.linux.devices.add(path="/dev/fuse", type="c", major=10, minor=229)
    adjuster.apply("10-adder", added)
    removed = nri.ContainerAdjustment()
    removed.linux.devices.add(path="-/dev/fuse")
    adjuster.apply("20-remover", removed)
    assert spec["linux"]["devices"] == []
    assert spec["linux"]["resources"].get("devices", []) == []


def userns_spec() -> dict[str, Any]:
    spec = base_spec()
    spec["linux"]["namespaces"] = [
        {"type": kind, "path": f"/run/pycri/pod/{kind}"} for kind in ("user", "network", "ipc", "uts")
    ] + [{"type": "pid"}, {"type": "mount"}]
    return spec


@pytest.mark.parametrize("kind", ["user", "-user", "network", "-network", "ipc", "uts"])
def test_namespaces_a_pods_user_namespace_owns_are_not_adjusted(kind: str) -> None:
    adjust = nri.ContainerAdjustment()
    adjust.linux.namespaces.add(type=kind, path="/proc/1/ns/net")
    spec = userns_spec()
    with pytest.raises(UserNamespaceConflict, match=f"plugin 10-ns adjusts linux.namespaces '{kind.lstrip('-')}'"):
        SpecAdjuster(spec, min_oom_score_adj=0).apply("10-ns", adjust)
    assert spec["linux"]["namespaces"] == userns_spec()["linux"]["namespaces"]


def test_other_namespaces_of_a_userns_pod_and_any_of_other_pods_may_be_adjusted() -> None:
    adjust = nri.ContainerAdjustment()
    adjust.linux.namespaces.add(type="cgroup")
    spec = userns_spec()
    SpecAdjuster(spec, min_oom_score_adj=0).apply("10-ns", adjust)
    assert {"type": "cgroup"} in spec["linux"]["namespaces"]
    adjust.linux.namespaces.add(type="network", path="/run/netns/other")
    spec = base_spec()
    SpecAdjuster(spec, min_oom_score_adj=0).apply("10-ns", adjust)
    assert {"type": "network", "path": "/run/netns/other"} in spec["linux"]["namespaces"]
