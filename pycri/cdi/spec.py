"""One CDI spec file: read (JSON, or YAML when its name ends in .yaml), checked field by field
the way the CDI reference loads it (unknown fields and duplicate keys refused, cdiVersion known
and at least the version whose fields the file uses), and kept as frozen dataclasses."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pycri.cdi.names import InvalidCdiName, check_device_name, parse_kind

CURRENT_VERSION = "1.1.0"
# Oldest first. 0.1.0 and 0.2.0 are known but refused as too old: every spec needs 0.3.0, as in the reference.
KNOWN_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
DEVICE_TYPES = ("", "b", "c", "u", "p")
NO_PERMISSIONS = "none"  # a device node with an empty cgroup access string
_T = TypeVar("_T")
_UINT32 = 2**32 - 1
_INT64 = 2**63 - 1
_ANNOTATIONS_MAX_BYTES = 256 * 1024
_ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class InvalidCdiSpec(ValueError):
    """The file is no CDI spec pycri can use; the message names the file's field at fault."""


@dataclass(frozen=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class IntelRdt:
    clos_id: str = ""
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    schemata: tuple[str, ...] | None = None
    enable_monitoring: bool = False


@dataclass(frozen=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    net_devices: tuple[NetDevice, ...] = ()
    hooks: tuple[Hook, ...] = ()
    mounts: tuple[Mount, ...] = ()
    intel_rdt: IntelRdt | None = None
    additional_gids: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return self == ContainerEdits()


@dataclass(frozen=True)
class Device:
    name: str
    edits: ContainerEdits
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class CdiSpec:
    path: Path
    priority: int  # the index of its spec dir: a later dir wins over an earlier one
    version: str
    vendor: str
    device_class: str
    annotations: Mapping[str, str]
    edits: ContainerEdits  # applied once when any device of this spec is injected
    devices: Mapping[str, Device]

    def qualified(self, device: str) -> str:
        return f"{self.vendor}/{self.device_class}={device}"


def read_spec(path: Path, priority: int) -> CdiSpec:
    """Read and check the spec file at `path` (OSError when it cannot be read)."""
    data = path.read_bytes()
    try:
        raw = _load_yaml(data) if path.suffix == ".yaml" else json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidCdiSpec(f"{path}: not valid {path.suffix[1:].upper()}: {err}") from None
    try:
        return parse_spec(raw, path, priority)
    except InvalidCdiSpec as err:
        raise InvalidCdiSpec(f"{path}: {err}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _load_yaml(data: bytes) -> Any:
    import yaml  # only a host with a .yaml spec pays for the import

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
            duplicates = {key for key in keys if keys.count(key) > 1}
            if duplicates:
                raise ValueError(f"duplicate key {sorted(map(str, duplicates))[0]!r}")
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(data, Loader=StrictLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        raise ValueError(str(err)) from None


def parse_spec(raw: Any, path: Path, priority: int) -> CdiSpec:
    fields = _fields(raw, "spec", {"cdiVersion", "kind", "annotations", "devices", "containerEdits"})
    version = _text(fields, "cdiVersion", "spec", required=True).removeprefix("v")
    if version not in KNOWN_VERSIONS:
        raise InvalidCdiSpec(f"cdiVersion: {version!r} is not a CDI spec version ({', '.join(KNOWN_VERSIONS)})")
    kind = _text(fields, "kind", "spec", required=True)
    try:
        vendor, device_class = parse_kind(kind)
    except InvalidCdiName as err:
        raise InvalidCdiSpec(f"kind: {err}") from None
    annotations = _annotations(fields.get("annotations"), "annotations")
    edits = _edits(fields.get("containerEdits"), "containerEdits")
    devices: dict[str, Device] = {}
    raw_devices = fields.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise InvalidCdiSpec("devices: a spec needs at least one device")
    for number, raw_device in enumerate(raw_devices):
        device = _device(raw_device, f"devices[{number}]")
        if device.name in devices:
            raise InvalidCdiSpec(f"devices[{number}].name: {device.name!r} is defined twice")
        devices[device.name] = device
    spec = CdiSpec(path, priority, version, vendor, device_class, annotations, edits, devices)
    needed = required_version(spec)
    if KNOWN_VERSIONS.index(needed) > KNOWN_VERSIONS.index(version):
        raise InvalidCdiSpec(f"cdiVersion: {version} is too old for the fields this spec uses, which need {needed}")
    return spec


def required_version(spec: CdiSpec) -> str:
    """The oldest CDI version that has every field the spec uses."""
    all_edits = [spec.edits, *(device.edits for device in spec.devices.values())]
    rdts = [edits.intel_rdt for edits in all_edits if edits.intel_rdt is not None]
    if any(edits.net_devices for edits in all_edits) or any(
        r.schemata is not None or r.enable_monitoring for r in rdts
    ):
        return "1.1.0"
    if rdts or any(edits.additional_gids for edits in all_edits):
        return "0.7.0"
    device_annotations = any(device.annotations for device in spec.devices.values())
    if spec.annotations or device_annotations or "." in spec.device_class:
        return "0.6.0"
    host_paths = any(node.host_path for edits in all_edits for node in edits.device_nodes)
    if host_paths or any(name[:1].isdigit() for name in spec.devices):
        return "0.5.0"
    if any(mount.type for edits in all_edits for mount in edits.mounts):
        return "0.4.0"
    return "0.3.0"


def _device(raw: Any, where: str) -> Device:
    fields = _fields(raw, where, {"name", "annotations", "containerEdits"})
    name = _text(fields, "name", where, required=True)
    try:
        check_device_name(name)
    except InvalidCdiName as err:
        raise InvalidCdiSpec(f"{where}.name: {err}") from None
    edits = _edits(fields.get("containerEdits"), f"{where}.containerEdits")
    if edits.empty:
        raise InvalidCdiSpec(f"{where}.containerEdits: a device needs at least one edit")
    return Device(name, edits, _annotations(fields.get("annotations"), f"{where}.annotations"))


def _edits(raw: Any, where: str) -> ContainerEdits:
    if raw is None:
        return ContainerEdits()
    known = {"env", "deviceNodes", "netDevices", "hooks", "mounts", "intelRdt", "additionalGids"}
    fields = _fields(raw, where, known)
    net_devices = _objects(fields, "netDevices", where, _net_device)
    for key in ("host_interface_name", "name"):
        values = [getattr(device, key) for device in net_devices]
        if len(set(values)) != len(values):
            raise InvalidCdiSpec(f"{where}.netDevices: a {key} appears twice")
    rdt = fields.get("intelRdt")
    return ContainerEdits(
        env=_env(fields, "env", where),
        device_nodes=_objects(fields, "deviceNodes", where, _device_node),
        net_devices=net_devices,
        hooks=_objects(fields, "hooks", where, _hook),
        mounts=_objects(fields, "mounts", where, _mount),
        intel_rdt=None if rdt is None else _intel_rdt(rdt, f"{where}.intelRdt"),
        additional_gids=tuple(
            _int(v, f"{where}.additionalGids[{n}]", 0, _UINT32) for n, v in _list(fields, "additionalGids", where)
        ),
    )


def _device_node(raw: Any, where: str) -> DeviceNode:
    known = {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
    fields = _fields(raw, where, known)
    node = DeviceNode(
        path=_absolute(fields, "path", where, required=True),
        host_path=_absolute(fields, "hostPath", where),
        type=_text(fields, "type", where),
        major=_int(fields.get("major", 0), f"{where}.major", -_INT64 - 1, _INT64),
        minor=_int(fields.get("minor", 0), f"{where}.minor", -_INT64 - 1, _INT64),
        file_mode=_optional_int(fields, "fileMode", where, _UINT32),
        permissions=_text(fields, "permissions", where),
        uid=_optional_int(fields, "uid", where, _UINT32),
        gid=_optional_int(fields, "gid", where, _UINT32),
    )
    if node.type not in DEVICE_TYPES:
        raise InvalidCdiSpec(f"{where}.type: {node.type!r} is none of b, c, u, p")
    if node.permissions not in ("", NO_PERMISSIONS) and node.permissions.strip("rwm"):
        raise InvalidCdiSpec(
            f"{where}.permissions: {node.permissions!r} is not made of r, w, m (or {NO_PERMISSIONS!r})"
        )
    return node


def _mount(raw: Any, where: str) -> Mount:
    fields = _fields(raw, where, {"hostPath", "containerPath", "options", "type"})
    return Mount(
        host_path=_text(fields, "hostPath", where, required=True),
        container_path=_absolute(fields, "containerPath", where, required=True),
        options=tuple(_text_item(v, f"{where}.options[{n}]") for n, v in _list(fields, "options", where)),
        type=_text(fields, "type", where),
    )


def _hook(raw: Any, where: str) -> Hook:
    fields = _fields(raw, where, {"hookName", "path", "args", "env", "timeout"})
    name = _text(fields, "hookName", where, required=True)
    if name not in HOOK_NAMES:
        raise InvalidCdiSpec(f"{where}.hookName: {name!r} is none of {', '.join(HOOK_NAMES)}")
    timeout = _optional_int(fields, "timeout", where, _INT64)
    if timeout is not None and timeout <= 0:
        raise InvalidCdiSpec(f"{where}.timeout: {timeout} is not a number of seconds above 0")
    return Hook(
        hook_name=name,
        path=_absolute(fields, "path", where, required=True),
        args=tuple(_text_item(v, f"{where}.args[{n}]") for n, v in _list(fields, "args", where)),
        env=_env(fields, "env", where),
        timeout=timeout,
    )


def _intel_rdt(raw: Any, where: str) -> IntelRdt:
    fields = _fields(raw, where, {"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"})
    clos_id = _text(fields, "closID", where)
    if clos_id != "/" and (len(clos_id) >= 4096 or clos_id in (".", "..") or "/" in clos_id or "\n" in clos_id):
        raise InvalidCdiSpec(f"{where}.closID: {clos_id!r} is not a file name")
    schemata = fields.get("schemata")
    monitoring = fields.get("enableMonitoring", False)
    if not isinstance(monitoring, bool):
        raise InvalidCdiSpec(f"{where}.enableMonitoring: expected true or false, got {monitoring!r}")
    return IntelRdt(
        clos_id=clos_id,
        l3_cache_schema=_text(fields, "l3CacheSchema", where),
        mem_bw_schema=_text(fields, "memBwSchema", where),
        schemata=None
        if schemata is None
        else tuple(_text_item(v, f"{where}.schemata[{n}]") for n, v in _list(fields, "schemata", where)),
        enable_monitoring=monitoring,
    )


def _net_device(raw: Any, where: str) -> NetDevice:
    fields = _fields(raw, where, {"hostInterfaceName", "name"})
    return NetDevice(
        host_interface_name=_text(fields, "hostInterfaceName", where, required=True),
        name=_text(fields, "name", where, required=True),
    )


# ---- field readers ----


def _fields(raw: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidCdiSpec(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise InvalidCdiSpec(f"{where}: unknown field {unknown[0]!r}")
    return {key: value for key, value in raw.items() if value is not None}


def _text(fields: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = fields.get(key, "")
    if not isinstance(value, str):
        raise InvalidCdiSpec(f"{where}.{key}: expected a string, got {value!r}")
    if required and not value:
        raise InvalidCdiSpec(f"{where}.{key}: required")
    return value


def _text_item(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidCdiSpec(f"{where}: expected a string, got {value!r}")
    return value


def _absolute(fields: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = _text(fields, key, where, required)
    if value and not value.startswith("/"):
        raise InvalidCdiSpec(f"{where}.{key}: {value!r} is not an absolute path")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidCdiSpec(f"{where}: expected an integer in {low}..{high}, got {value!r}")
    return value


def _optional_int(fields: dict[str, Any], key: str, where: str, high: int) -> int | None:
    return None if key not in fields else _int(fields[key], f"{where}.{key}", 0, high)


def _list(fields: dict[str, Any], key: str, where: str) -> list[tuple[int, Any]]:
    value = fields.get(key, [])
    if not isinstance(value, list):
        raise InvalidCdiSpec(f"{where}.{key}: expected a list, got {value!r}")
    return list(enumerate(value))


def _objects(fields: dict[str, Any], key: str, where: str, parse: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    return tuple(parse(value, f"{where}.{key}[{number}]") for number, value in _list(fields, key, where))


def _env(fields: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    env = tuple(_text_item(value, f"{where}.{key}[{n}]") for n, value in _list(fields, key, where))
    for number, variable in enumerate(env):
        if variable.find("=") <= 0:
            raise InvalidCdiSpec(f"{where}.{key}[{number}]: {variable!r} is not NAME=value")
    return env


def _annotations(raw: Any, where: str) -> dict[str, str]:
    """Annotations as Kubernetes takes them: qualified-name keys, string values, 256 KiB in all."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidCdiSpec(f"{where}: expected an object, got {type(raw).__name__}")
    size = 0
    for key, value in raw.items():
        if not isinstance(value, str):
            raise InvalidCdiSpec(f"{where}[{key!r}]: expected a string, got {value!r}")
        prefix, slash, name = str(key).lower().rpartition("/")
        prefix_ok = not slash or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix))
        if not prefix_ok or len(name) > 63 or not _ANNOTATION_NAME.fullmatch(name):
            raise InvalidCdiSpec(f"{where}: key {key!r} is not a qualified name ([prefix/]name)")
        size += len(str(key)) + len(value)
    if size > _ANNOTATIONS_MAX_BYTES:
        raise InvalidCdiSpec(f"{where}: {size} bytes, more than {_ANNOTATIONS_MAX_BYTES}")
    return {str(key): value for key, value in raw.items()}
