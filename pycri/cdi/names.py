"""CDI names: the kind "vendor/class", qualified device names "vendor/class=name", and the
cdi.k8s.io/ annotations that request devices by such names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pycri.api import api_pb2
from pycri.errors import InvalidArgument

ANNOTATION_PREFIX = "cdi.k8s.io/"

# A vendor or class starts with a letter and ends with a letter or digit; a device name may
# start with a digit (CDI 0.5.0) and may hold ':' too.
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")


class InvalidCdiName(InvalidArgument, ValueError):
    """A kind or device name that breaks the CDI naming rules; the message says which part."""


@dataclass(frozen=True)
class QualifiedName:
    vendor: str
    device_class: str
    name: str

    def __str__(self) -> str:
        return f"{self.vendor}/{self.device_class}={self.name}"


def check_vendor(vendor: str) -> None:
    if not _VENDOR_OR_CLASS.fullmatch(vendor):
        raise InvalidCdiName(f"vendor {vendor!r}: letters, digits, '_', '-', '.', starting with a letter")


def check_class(device_class: str) -> None:
    if not _VENDOR_OR_CLASS.fullmatch(device_class):
        raise InvalidCdiName(f"class {device_class!r}: letters, digits, '_', '-', '.', starting with a letter")


def check_device_name(name: str) -> None:
    if not _DEVICE_NAME.fullmatch(name):
        raise InvalidCdiName(
            f"device name {name!r}: letters, digits, '_', '-', '.', ':', starting with a letter or digit"
        )


def parse_kind(kind: str) -> tuple[str, str]:
    """(vendor, class) of a spec's kind "vendor/class"."""
    vendor, slash, device_class = kind.partition("/")
    if not slash or not vendor or not device_class:
        raise InvalidCdiName(f"kind {kind!r} is not vendor/class")
    check_vendor(vendor)
    check_class(device_class)
    return vendor, device_class


def parse_qualified_name(text: str) -> QualifiedName:
    """vendor/class=name, each part checked."""
    kind, equals, name = text.partition("=")
    if not equals or not name:
        raise InvalidCdiName(f"{text!r} is not a qualified CDI device name (vendor/class=name)")
    try:
        vendor, device_class = parse_kind(kind)
        check_device_name(name)
    except InvalidCdiName as err:
        raise InvalidCdiName(f"{text!r}: {err}") from None
    return QualifiedName(vendor, device_class, name)


def annotated_devices(annotations: Mapping[str, str]) -> list[str]:
    """The device names the cdi.k8s.io/<key> annotations request (comma-separated each), in key order."""
    devices: list[str] = []
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        for number, item in enumerate(annotations[key].split(",")):
            try:
                devices.append(str(parse_qualified_name(item)))
            except InvalidCdiName as err:
                raise InvalidCdiName(f"annotations[{key!r}] item {number}: {err}") from None
    return devices


def requested_devices(config: api_pb2.ContainerConfig) -> list[str]:
    """The CDI devices a container asks for: CDI_devices, then the annotations; each once."""
    devices: list[str] = []
    for number, device in enumerate(config.CDI_devices):
        try:
            devices.append(str(parse_qualified_name(device.name)))
        except InvalidCdiName as err:
            raise InvalidCdiName(f"CDI_devices[{number}].name: {err}") from None
    devices.extend(annotated_devices(config.annotations))
    return list(dict.fromkeys(devices))
