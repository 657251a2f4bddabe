"""linux.resources, device cgroup rules and device nodes."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.oci.spec import SpecError, linux_resources
from pycri.oci.spec_resources import device_cgroup_rules, host_devices, requested_devices
from tests.unit.test_oci_spec import HOST, build, container_config

pytestmark = pytest.mark.unit

V2_HOST = replace(HOST, cgroup_unified=True)


def test_zero_fields_are_left_out() -> None:
    assert linux_resources(api_pb2.LinuxContainerResources(), HOST) == {}


def test_all_fields() -> None:
    resources = api_pb2.LinuxContainerResources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=1 << 30,
        memory_swap_limit_in_bytes=2 << 30,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4 << 20)],
        unified={"memory.high": "900000000"},
        oom_score_adj=100,
    )
    assert linux_resources(resources, V2_HOST) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 1 << 30, "swap": 2 << 30},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "unified": {"memory.high": "900000000"},
    }


def test_swap_equals_the_memory_limit_unless_given() -> None:
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=256 << 20)
    assert linux_resources(resources, HOST)["memory"] == {"limit": 256 << 20, "swap": 256 << 20}


def test_without_swap_accounting_no_swap_is_set(caplog: pytest.LogCaptureFixture) -> None:
    no_swap = replace(HOST, swap_limit=False)
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=256 << 20)
    assert linux_resources(resources, no_swap)["memory"] == {"limit": 256 << 20}
    assert not caplog.records
    resources.memory_swap_limit_in_bytes = 512 << 20
    with caplog.at_level(logging.WARNING):
        assert linux_resources(resources, no_swap)["memory"] == {"limit": 256 << 20}
    assert "swap limit skipped" in caplog.text


def test_controllers_the_host_lacks_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    resources = api_pb2.LinuxContainerResources(
        hugepage_limits=[api_pb2.HugepageLimit(page_size="1GB", limit=1 << 30)], unified={"io.weight": "50"}
    )
    with caplog.at_level(logging.WARNING):
        assert linux_resources(resources, replace(HOST, hugetlb=False)) == {}
    assert "hugepage limits skipped" in caplog.text
    assert "unified cgroup settings skipped on cgroup v1" in caplog.text


def test_container_spec_uses_the_container_resources(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    config.linux.resources.cpu_shares = 256
    resources = build(tmp_path, config)["linux"]["resources"]
    assert resources["cpu"] == {"shares": 256}
    assert resources["devices"] == device_cgroup_rules(False)


def test_device_rules() -> None:
    rules = device_cgroup_rules(False)
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in rules
    assert device_cgroup_rules(True) == [{"allow": True, "access": "rwm"}]
    rules.append({"mutated": True})
    assert {"mutated": True} not in device_cgroup_rules(False)


def _null() -> os.stat_result:
    return os.stat("/dev/null")


def test_requested_device(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/dev/null")
    devices = [
        api_pb2.Device(host_path="/dev/null", container_path="/dev/mynull", permissions="rw"),
        api_pb2.Device(host_path=str(tmp_path / "link"), container_path="/dev/other", permissions=""),
    ]
    nodes, rules = requested_devices(devices)
    null = _null()
    assert nodes[0] == {
        "path": "/dev/mynull",
        "type": "c",
        "major": 1,
        "minor": 3,
        "fileMode": null.st_mode & 0o7777,
        "uid": null.st_uid,
        "gid": null.st_gid,
    }
    assert nodes[1]["path"] == "/dev/other"
    assert rules == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]


def test_requested_device_directory_brings_its_devices(tmp_path: Path) -> None:
    nodes, rules = requested_devices([api_pb2.Device(host_path="/dev", container_path="/hostdev", permissions="r")])
    paths = {node["path"] for node in nodes}
    assert "/hostdev/null" in paths
    assert all(rule["access"] == "r" for rule in rules)
    assert len(rules) == len(nodes)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            api_pb2.Device(host_path="/dev/no-such-device", container_path="/dev/x"),
            r"^devices\[0\].host_path: .*No such",
        ),
        (
            api_pb2.Device(host_path="/etc/hostname", container_path="/dev/x"),
            r"^devices\[0\].host_path: .* not a device",
        ),
        (
            api_pb2.Device(host_path="/dev/null", container_path="/dev/x", permissions="rwx"),
            r"^devices\[0\].permissions",
        ),
        (api_pb2.Device(host_path="/dev/null", container_path="dev/x"), r"^devices\[0\].container_path"),
    ],
)
def test_bad_devices(device: api_pb2.Device, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        requested_devices([device])


def test_host_devices_skip_console_and_pseudo_filesystems() -> None:
    paths = {node["path"] for node in host_devices(Path("/dev"))}
    assert "/dev/null" in paths
    assert "/dev/console" not in paths
    assert not any(path.startswith(("/dev/pts/", "/dev/shm/")) for path in paths)


def test_container_spec_devices(tmp_path: Path) -> None:
    config = container_config(
        args=["/app"], devices=[api_pb2.Device(host_path="/dev/null", container_path="/dev/null2", permissions="rwm")]
    )
    linux = build(tmp_path, config)["linux"]
    assert [node["path"] for node in linux["devices"]] == ["/dev/null2"]
    assert linux["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}


def test_privileged_requested_devices_replace_host_nodes_at_the_same_path(tmp_path: Path) -> None:
    config = container_config(
        args=["/app"], devices=[api_pb2.Device(host_path="/dev/zero", container_path="/dev/null", permissions="r")]
    )
    config.linux.security_context.privileged = True
    sandbox = api_pb2.PodSandboxConfig()
    sandbox.linux.security_context.privileged = True
    nodes = build(tmp_path, config, sandbox=sandbox)["linux"]["devices"]
    at_null = [node for node in nodes if node["path"] == "/dev/null"]
    assert [(node["major"], node["minor"]) for node in at_null] == [(1, 5)]
