"""The OCI spec edits CDI injection and NRI adjustments share: environment, device nodes with their
cgroup rules, mount order, hooks; and that both callers go through them."""

from __future__ import annotations

import posixpath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.cdi.inject import inject_devices
from pycri.cdi.registry import ResolvedDevices
from pycri.cdi.spec import ContainerEdits, DeviceNode, Mount
from pycri.oci.spec_edits import add_device_node, oci_hook, remove_device_node, remove_env, set_env, sort_mounts

pytestmark = pytest.mark.unit

FUSE = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
FUSE_RULE = {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
DENY_ALL = {"allow": False, "access": "rwm"}
ALLOW_ALL = {"allow": True, "access": "rwm"}


def test_env_is_replaced_where_it_stands_or_appended() -> None:
    env = ["PATH=/bin", "A=1", "B=$A"]
    set_env(env, "A=2")
    set_env(env, "C=3")
    assert env == ["PATH=/bin", "A=2", "B=$A", "C=3"]
    remove_env(env, "A")
    assert env == ["PATH=/bin", "B=$A", "C=3"]


def test_a_device_node_comes_with_its_rule_and_leaves_with_it() -> None:
    linux: dict[str, Any] = {"resources": {"devices": [DENY_ALL]}}
    add_device_node(linux, dict(FUSE), "rwm")
    assert linux["devices"] == [FUSE]
    assert linux["resources"]["devices"] == [DENY_ALL, FUSE_RULE]
    remove_device_node(linux, "/dev/fuse")
    assert linux["devices"] == []
    assert linux["resources"]["devices"] == [DENY_ALL]


def test_a_replaced_node_takes_its_old_rule_along() -> None:
    linux: dict[str, Any] = {}
    add_device_node(linux, {"path": "/dev/x", "type": "c", "major": 1, "minor": 1}, "rwm")
    add_device_node(linux, {"path": "/dev/x", "type": "b", "major": 8, "minor": 0}, "r")
    assert linux["devices"] == [{"path": "/dev/x", "type": "b", "major": 8, "minor": 0}]
    assert linux["resources"]["devices"] == [{"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"}]


def test_a_rule_another_node_needs_stays() -> None:
    linux: dict[str, Any] = {}
    add_device_node(linux, dict(FUSE), "rwm")
    add_device_node(linux, {**FUSE, "path": "/dev/fuse-alias"}, "rwm")
    remove_device_node(linux, "/dev/fuse")
    assert [d["path"] for d in linux["devices"]] == ["/dev/fuse-alias"]
    assert FUSE_RULE in linux["resources"]["devices"]


def test_fifos_get_no_rule_and_unbuffered_char_devices_a_char_rule() -> None:
    linux: dict[str, Any] = {"resources": {"devices": [ALLOW_ALL]}}
    add_device_node(linux, {"path": "/dev/pipe", "type": "p", "major": 0, "minor": 0}, "rwm")
    add_device_node(linux, {"path": "/dev/tty9", "type": "u", "major": 4, "minor": 9}, "rw")
    assert linux["resources"]["devices"] == [
        ALLOW_ALL,
        {"allow": True, "type": "c", "major": 4, "minor": 9, "access": "rw"},
    ]
    remove_device_node(linux, "/dev/pipe")  # a privileged container's allow-all is no rule of the pipe's
    remove_device_node(linux, "/dev/tty9")
    assert linux["resources"]["devices"] == [ALLOW_ALL]


def test_removing_an_absent_node_changes_nothing() -> None:
    linux: dict[str, Any] = {"resources": {"devices": [FUSE_RULE]}}
    remove_device_node(linux, "/dev/fuse")
    assert linux == {"resources": {"devices": [FUSE_RULE]}}


def test_mounts_sort_parents_first_the_root_before_all() -> None:
    mounts = [{"destination": d} for d in ("/data/sub", "/data", "/", "/proc", "/a//b/")]
    sort_mounts(mounts)
    assert [m["destination"] for m in mounts] == ["/", "/data", "/proc", "/data/sub", "/a//b/"]


@given(st.lists(st.sampled_from(["/", "/a", "/a/b", "/b", "/a/b/c", "/c/"]), max_size=8))
def test_no_mount_is_sorted_after_one_below_it(destinations: list[str]) -> None:
    mounts = [{"destination": d} for d in destinations]
    sort_mounts(mounts)
    order = [posixpath.normpath(m["destination"]) for m in mounts]
    for number, destination in enumerate(order):
        below = destination.rstrip("/") + "/"
        assert not any(earlier != destination and earlier.startswith(below) for earlier in order[:number])


def test_oci_hook_leaves_out_what_is_not_given() -> None:
    assert oci_hook("/bin/hook", (), (), None) == {"path": "/bin/hook"}
    assert oci_hook("/bin/hook", ["hook", "x"], ["A=1"], 0) == {
        "path": "/bin/hook",
        "args": ["hook", "x"],
        "env": ["A=1"],
        "timeout": 0,
    }


def test_cdi_injection_goes_through_the_shared_edits() -> None:
    spec: dict[str, Any] = {
        "process": {"env": ["A=1", "B=2"]},
        "mounts": [{"destination": "/data", "source": "/srv", "type": "bind"}],
        "linux": {"resources": {"devices": [DENY_ALL]}},
    }
    node = DeviceNode(path="/dev/vendor0", type="c", major=240, minor=1, permissions="rw")
    edits = ContainerEdits(env=("A=9",), device_nodes=(node,), mounts=(Mount(host_path="/host", container_path="/"),))
    inject_devices(spec, ResolvedDevices(names=("vendor.com/dev=0",), edits=(edits,)))
    assert spec["process"]["env"] == ["A=9", "B=2"]
    assert [m["destination"] for m in spec["mounts"]] == ["/", "/data"]
    assert spec["linux"]["resources"]["devices"] == [
        DENY_ALL,
        {"allow": True, "type": "c", "major": 240, "minor": 1, "access": "rw"},
    ]
