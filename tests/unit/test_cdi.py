"""CDI: qualified names and annotations, spec files (JSON and YAML, versions, refusals), the
registry over spec dirs (priority, conflicts, unusable files), and the edits made to an OCI spec."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.cdi.inject import CdiInjectionError, inject_devices
from pycri.cdi.names import InvalidCdiName, annotated_devices, parse_qualified_name, requested_devices
from pycri.cdi.registry import UnresolvedDevices, load_registry
from pycri.cdi.spec import CURRENT_VERSION, InvalidCdiSpec, parse_spec, read_spec, required_version
from pycri.errors import InvalidArgument

pytestmark = pytest.mark.unit

NULL_RDEV = os.stat("/dev/null").st_rdev


def spec_doc(*devices: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"cdiVersion": CURRENT_VERSION, "kind": "vendor.example/device"}
    doc["devices"] = list(devices) or [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}]
    doc.update(fields)
    return doc


def write(directory: Path, name: str, doc: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def oci_spec(**user: Any) -> dict[str, Any]:
    return {
        "process": {"env": ["PATH=/bin", "HOSTNAME=x"], "user": {"uid": 0, "gid": 0, **user}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/pod/hosts"},
        ],
        "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}, "namespaces": [{"type": "mount"}]},
    }


def inject(tmp_path: Path, docs: list[dict[str, Any]], names: list[str], spec: dict[str, Any] | None = None) -> Any:
    for number, doc in enumerate(docs):
        write(tmp_path / "cdi", f"{number}.json", doc)
    resolved = load_registry([tmp_path / "cdi"]).resolve(names)
    spec = spec if spec is not None else oci_spec()
    inject_devices(spec, resolved)
    return spec


# ---- names ----


@pytest.mark.parametrize("name", ["vendor.example/device=a", "v/c=0", "nvidia.com/gpu=GPU-1:0", "a-b_c.d/e.f=x_y"])
def test_qualified_names_parse(name: str) -> None:
    assert str(parse_qualified_name(name)) == name


@pytest.mark.parametrize(
    "name",
    ["", "vendor.example/device", "device=a", "/dev/null", "vendor/class=", "1v/c=a", "v/c=a-", "v/c/d=a", "v/c=a b"],
)
def test_bad_qualified_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidCdiName):
        parse_qualified_name(name)


def test_annotations_request_devices_in_key_order() -> None:
    annotations = {
        "cdi.k8s.io/z": "v.io/c=2",
        "cdi.k8s.io/a": "v.io/c=0,v.io/c=1",
        "io.kubernetes.other": "not=a/device",
    }
    assert annotated_devices(annotations) == ["v.io/c=0", "v.io/c=1", "v.io/c=2"]


def test_bad_annotation_value_names_its_key() -> None:
    with pytest.raises(InvalidArgument, match=r"annotations\['cdi.k8s.io/x'\] item 1: 'nope'"):
        annotated_devices({"cdi.k8s.io/x": "v.io/c=0,nope"})


def test_field_and_annotation_requests_join_without_repeats() -> None:
    config = api_pb2.ContainerConfig(annotations={"cdi.k8s.io/k": "v.io/c=1,v.io/c=0"})
    config.CDI_devices.add(name="v.io/c=0")
    assert requested_devices(config) == ["v.io/c=0", "v.io/c=1"]
    config.CDI_devices.add(name="gpu0")
    with pytest.raises(InvalidArgument, match=r"^CDI_devices\[1\].name: 'gpu0'"):
        requested_devices(config)


@given(st.text(max_size=40))
def test_any_device_name_is_parsed_or_refused(text: str) -> None:
    try:
        name = parse_qualified_name(text)
    except InvalidCdiName:
        return
    assert str(name) == text


# ---- spec files ----


def test_json_and_yaml_specs_read_alike(tmp_path: Path) -> None:
    json_spec = read_spec(write(tmp_path, "a.json", spec_doc()), 0)
    yaml_text = (
        f"cdiVersion: {CURRENT_VERSION}\nkind: vendor.example/device\n"
        "devices:\n- name: a\n  containerEdits:\n    deviceNodes:\n    - path: /dev/null\n"
    )
    yaml_spec = read_spec(write(tmp_path, "a.yaml", yaml_text), 0)
    assert yaml_spec.devices == json_spec.devices
    assert (yaml_spec.vendor, yaml_spec.device_class) == ("vendor.example", "device")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (spec_doc(cdiVersion="9.0.0"), "cdiVersion: '9.0.0' is not a CDI spec version"),
        (spec_doc(kind="nokind"), "kind: kind 'nokind' is not vendor/class"),
        (spec_doc(extra=1), "spec: unknown field 'extra'"),
        ({"cdiVersion": "0.3.0", "kind": "v.io/c", "devices": []}, "devices: a spec needs at least one device"),
        (
            spec_doc({"name": "a", "containerEdits": {}}),
            r"devices\[0\].containerEdits: a device needs at least one edit",
        ),
        (spec_doc({"name": "a", "containerEdits": {"env": ["=x"]}}), r"env\[0\]: '=x' is not NAME=value"),
        (
            spec_doc({"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "type": "z"}]}}),
            r"deviceNodes\[0\].type: 'z'",
        ),
        (
            spec_doc({"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rx"}]}}),
            r"deviceNodes\[0\].permissions: 'rx'",
        ),
        (
            spec_doc({"name": "a", "containerEdits": {"hooks": [{"hookName": "onBoot", "path": "/bin/true"}]}}),
            r"hooks\[0\].hookName: 'onBoot'",
        ),
        (
            spec_doc({"name": "a", "containerEdits": {"mounts": [{"hostPath": "/x", "containerPath": "rel"}]}}),
            r"mounts\[0\].containerPath: 'rel' is not an absolute path",
        ),
        (
            spec_doc({"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "major": "1"}]}}),
            r"deviceNodes\[0\].major: expected an integer",
        ),
        (
            spec_doc({"name": "a", "containerEdits": {"intelRdt": {"closID": "x", "enableCMT": True}}}),
            r"intelRdt: unknown field 'enableCMT'",
        ),
        (spec_doc(spec_doc()["devices"][0], spec_doc()["devices"][0]), r"devices\[1\].name: 'a' is defined twice"),
        (spec_doc(annotations={"bad key!": "x"}), "annotations: key 'bad key!' is not a qualified name"),
    ],
)
def test_bad_specs_are_refused_by_field(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCdiSpec, match=message):
        read_spec(write(tmp_path, "s.json", doc), 0)


def test_duplicate_keys_are_refused_in_json_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(InvalidCdiSpec, match="duplicate key 'kind'"):
        read_spec(write(tmp_path, "s.json", '{"kind": "a/b", "kind": "c/d"}'), 0)
    with pytest.raises(InvalidCdiSpec, match="duplicate key 'kind'"):
        read_spec(write(tmp_path, "s.yaml", "kind: a/b\nkind: c/d\n"), 0)


@pytest.mark.parametrize(
    ("edits", "version"),
    [
        ({"deviceNodes": [{"path": "/dev/null"}]}, "0.3.0"),
        ({"mounts": [{"hostPath": "/x", "containerPath": "/y", "type": "bind"}]}, "0.4.0"),
        ({"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null"}]}, "0.5.0"),
        ({"additionalGids": [5]}, "0.7.0"),
        ({"intelRdt": {"closID": "c"}}, "0.7.0"),
        ({"netDevices": [{"hostInterfaceName": "eth1", "name": "net1"}]}, "1.1.0"),
        ({"intelRdt": {"schemata": ["L3:0=f"]}}, "1.1.0"),
    ],
)
def test_fields_need_the_version_that_brought_them(tmp_path: Path, edits: dict[str, Any], version: str) -> None:
    doc = spec_doc({"name": "a", "containerEdits": edits})
    assert required_version(read_spec(write(tmp_path, "s.json", doc), 0)) == version
    if version != "0.3.0":
        doc["cdiVersion"] = "0.3.0"
        with pytest.raises(InvalidCdiSpec, match=f"too old for the fields this spec uses, which need {version}"):
            read_spec(write(tmp_path, "s.json", doc), 0)


def test_versions_from_0_3_load_and_a_v_prefix_is_taken(tmp_path: Path) -> None:
    for version in ("v0.3.0", "0.4.0", "0.8.0", "v1.0.0", CURRENT_VERSION):
        read_spec(write(tmp_path, "s.json", spec_doc(cdiVersion=version)), 0)
    with pytest.raises(InvalidCdiSpec, match="cdiVersion: 0.2.0 is too old .* need 0.3.0"):
        read_spec(write(tmp_path, "s.json", spec_doc(cdiVersion="0.2.0")), 0)


FIELD_NAMES = [
    *("cdiVersion", "kind", "devices", "containerEdits", "name", "annotations", "env", "deviceNodes", "path"),
    *("hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid", "mounts", "containerPath"),
    *("options", "hooks", "hookName", "args", "timeout", "intelRdt", "closID", "schemata", "enableMonitoring"),
    *("netDevices", "hostInterfaceName", "additionalGids"),
]
LEAVES = (
    st.none() | st.booleans() | st.integers() | st.sampled_from(["1.1.0", "0.3.0", "v.io/c", "/dev/null", "c", "x=1"])
)


@given(
    st.recursive(
        LEAVES,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), inner, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_any_document_is_taken_or_refused(doc: Any) -> None:
    with contextlib.suppress(InvalidCdiSpec):
        parse_spec(doc, Path("/etc/cdi/s.json"), 0)


# ---- registry ----


def test_a_later_dir_overrides_an_earlier_one(tmp_path: Path) -> None:
    write(tmp_path / "etc", "a.json", spec_doc({"name": "a", "containerEdits": {"env": ["FROM=etc"]}}))
    write(tmp_path / "run", "a.json", spec_doc({"name": "a", "containerEdits": {"env": ["FROM=run"]}}))
    registry = load_registry([tmp_path / "etc", tmp_path / "run", tmp_path / "missing"])
    assert registry.resolve(["vendor.example/device=a"]).edits[1].env == ("FROM=run",)
    assert not registry.conflicts and not registry.errors


def test_two_definitions_in_one_dir_conflict_and_neither_is_used(tmp_path: Path) -> None:
    first = write(tmp_path / "etc", "1.json", spec_doc())
    second = write(tmp_path / "etc", "2.yaml", json.dumps(spec_doc()))  # JSON is YAML too
    registry = load_registry([tmp_path / "etc"])
    assert registry.conflicts == {"vendor.example/device=a": [first, second]}
    with pytest.raises(UnresolvedDevices, match=r"vendor.example/device=a \(defined in more than one spec: .*1.json"):
        registry.resolve(["vendor.example/device=a"])


def test_an_unusable_spec_is_reported_and_the_rest_still_count(tmp_path: Path) -> None:
    write(tmp_path / "etc", "good.json", spec_doc())
    bad = write(tmp_path / "etc", "bad.json", "{")
    write(tmp_path / "etc", "notes.txt", "ignored")
    (tmp_path / "etc" / "sub.json").mkdir()
    registry = load_registry([tmp_path / "etc"])
    assert set(registry.errors) == {bad}
    assert list(registry.devices) == ["vendor.example/device=a"]
    with pytest.raises(UnresolvedDevices, match=r"^unresolvable CDI devices: vendor.example/device=zz \(no usable"):
        registry.resolve(["vendor.example/device=zz"])


def test_spec_edits_come_once_before_each_device(tmp_path: Path) -> None:
    doc = spec_doc(
        {"name": "a", "containerEdits": {"env": ["A=1"]}},
        {"name": "b", "containerEdits": {"env": ["B=1"]}},
        containerEdits={"env": ["SPEC=1"]},
    )
    write(tmp_path / "cdi", "s.json", doc)
    resolved = load_registry([tmp_path / "cdi"]).resolve(["vendor.example/device=b", "vendor.example/device=a"])
    assert [edits.env for edits in resolved.edits] == [("SPEC=1",), ("B=1",), ("A=1",)]


# ---- injection ----


def test_device_node_is_filled_from_the_host_and_allowed_in_the_cgroup(tmp_path: Path) -> None:
    spec = inject(tmp_path, [spec_doc()], ["vendor.example/device=a"])
    assert spec["linux"]["devices"] == [
        {
            "path": "/dev/null",
            "type": "c",
            "major": os.major(NULL_RDEV),
            "minor": os.minor(NULL_RDEV),
            "fileMode": 0o666,
        }
    ]
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": os.major(NULL_RDEV),
        "minor": os.minor(NULL_RDEV),
        "access": "rwm",
    }


def test_device_node_at_another_path_is_owned_by_the_container_user(tmp_path: Path) -> None:
    node = {"path": "/dev/vendor0", "hostPath": "/dev/null", "permissions": "rw"}
    doc = spec_doc({"name": "a", "containerEdits": {"deviceNodes": [node]}})
    spec = inject(tmp_path, [doc], ["vendor.example/device=a"], oci_spec(uid=1000, gid=1001))
    (device,) = spec["linux"]["devices"]
    assert (device["path"], device["uid"], device["gid"]) == ("/dev/vendor0", 1000, 1001)
    assert spec["linux"]["resources"]["devices"][-1]["access"] == "rw"


def test_missing_host_node_fails_unless_the_spec_gives_it_whole(tmp_path: Path) -> None:
    given_whole = {"path": "/dev/gone", "type": "c", "major": 240, "minor": 1, "permissions": "none"}
    doc = spec_doc(
        {"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/pycri-test-gone"}]}},
        {"name": "b", "containerEdits": {"deviceNodes": [given_whole]}},
    )
    with pytest.raises(CdiInjectionError, match=r"vendor.example/device=a: device node /dev/pycri-test-gone"):
        inject(tmp_path, [doc], ["vendor.example/device=a"])
    spec = inject(tmp_path, [doc], ["vendor.example/device=b"])
    assert spec["linux"]["resources"]["devices"][-1]["access"] == ""


def test_type_that_does_not_match_the_host_node_fails(tmp_path: Path) -> None:
    doc = spec_doc({"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/null", "type": "b"}]}})
    with pytest.raises(CdiInjectionError, match="type 'b', but /dev/null is 'c'"):
        inject(tmp_path, [doc], ["vendor.example/device=a"])


def test_env_replaces_in_place_and_appends(tmp_path: Path) -> None:
    doc = spec_doc({"name": "a", "containerEdits": {"env": ["PATH=/vendor/bin", "VENDOR=1"]}})
    spec = inject(tmp_path, [doc], ["vendor.example/device=a"])
    assert spec["process"]["env"] == ["PATH=/vendor/bin", "HOSTNAME=x", "VENDOR=1"]


def test_mounts_replace_the_same_destination_and_sort_parents_first(tmp_path: Path) -> None:
    mounts = [
        {"hostPath": "/srv/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "rbind"], "type": "bind"},
        {"hostPath": "/srv/hosts", "containerPath": "/etc/hosts", "options": ["bind"]},
    ]
    spec = inject(
        tmp_path, [spec_doc({"name": "a", "containerEdits": {"mounts": mounts}})], ["vendor.example/device=a"]
    )
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/etc/hosts", "/usr/lib/vendor"]
    assert spec["mounts"][1] == {"destination": "/etc/hosts", "source": "/srv/hosts", "options": ["bind"]}


def test_mounts_in_a_user_namespace_keep_their_options(tmp_path: Path) -> None:
    # CreateContainer stages them ID-mapped (runc 1.1 would take an idmap option as mount data).
    mounts = [{"hostPath": "/srv/lib", "containerPath": "/opt/lib", "options": ["rbind"]}]
    spec = oci_spec()
    spec["linux"]["namespaces"].append({"type": "user", "path": "/run/userns"})
    doc = spec_doc({"name": "a", "containerEdits": {"mounts": mounts}})
    spec = inject(tmp_path, [doc], ["vendor.example/device=a"], spec)
    assert spec["mounts"][-1]["options"] == ["rbind"]


def test_hooks_gids_and_intel_rdt(tmp_path: Path) -> None:
    edits = {
        "hooks": [
            {"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"], "timeout": 5}
        ],
        "additionalGids": [0, 44, 44, 107],
        "intelRdt": {"closID": "gold", "l3CacheSchema": "L3:0=ff"},
    }
    spec = inject(tmp_path, [spec_doc({"name": "a", "containerEdits": edits})], ["vendor.example/device=a"])
    assert spec["hooks"] == {
        "createContainer": [{"path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"], "timeout": 5}]
    }
    assert spec["process"]["user"]["additionalGids"] == [44, 107]
    assert spec["linux"]["intelRdt"] == {"closID": "gold", "l3CacheSchema": "L3:0=ff"}


def test_what_runc_cannot_do_is_refused_not_dropped(tmp_path: Path) -> None:
    net = spec_doc({"name": "a", "containerEdits": {"netDevices": [{"hostInterfaceName": "eth9", "name": "net0"}]}})
    with pytest.raises(CdiInjectionError, match=r"netDevices \(eth9\)"):
        inject(tmp_path, [net], ["vendor.example/device=a"])
    rdt = spec_doc({"name": "a", "containerEdits": {"intelRdt": {"enableMonitoring": True}}})
    with pytest.raises(CdiInjectionError, match="enableMonitoring"):
        inject(tmp_path, [rdt], ["vendor.example/device=a"])
