"""Edits to a finished OCI spec (config.json as a dict) that both CDI injection (pycri/cdi/inject.py)
and NRI plugins' adjustments (pycri/nri/adjust.py) make: environment variables, device nodes with
their device cgroup rules, mount order and OCI hooks."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

# The device cgroup rule type that lets a container open a node of each type ("u" is an unbuffered
# character device); a FIFO ("p") needs no rule, and runc refuses a rule of any other type.
_RULE_TYPES = {"b": "b", "c": "c", "u": "c"}


def set_env(env: list[str], entry: str) -> None:
    """Set NAME=VALUE: a variable already set is replaced where it stands (a later one may refer
    to it), a new one is appended."""
    name = entry.partition("=")[0]
    for number, current in enumerate(env):
        if current.partition("=")[0] == name:
            env[number] = entry
            return
    env.append(entry)


def remove_env(env: list[str], name: str) -> None:
    env[:] = [entry for entry in env if entry.partition("=")[0] != name]


def add_device_node(linux: dict[str, Any], device: dict[str, Any], access: str) -> None:
    """Put an OCI device node (path, type, major, minor, ...) in linux.devices, replacing the one at its
    path, and a device cgroup rule with `access` for its numbers so the container can open it."""
    remove_device_node(linux, device["path"])
    linux.setdefault("devices", []).append(device)
    rule_type = _RULE_TYPES.get(device["type"])
    if rule_type is not None:
        rule = {"allow": True, "type": rule_type, "major": device["major"], "minor": device["minor"], "access": access}
        linux.setdefault("resources", {}).setdefault("devices", []).append(rule)


def remove_device_node(linux: dict[str, Any], path: str) -> None:
    """Take the node at `path` out of linux.devices, with the allow rules for its numbers unless
    another node left in the spec has the same numbers."""
    devices: list[dict[str, Any]] = linux.get("devices") or []
    if not any(node.get("path") == path for node in devices):
        return
    removed = {_node_numbers(node) for node in devices if node.get("path") == path}
    devices[:] = [node for node in devices if node.get("path") != path]
    unused = {numbers for numbers in removed if numbers[0] is not None} - {_node_numbers(node) for node in devices}
    rules: list[dict[str, Any]] = linux.get("resources", {}).get("devices") or []
    rules[:] = [rule for rule in rules if not (rule.get("allow") and _rule_numbers(rule) in unused)]


def _node_numbers(node: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    return _RULE_TYPES.get(node.get("type", "")), node.get("major"), node.get("minor")


def _rule_numbers(rule: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    return rule.get("type"), rule.get("major"), rule.get("minor")


def sort_mounts(mounts: list[dict[str, Any]]) -> None:
    """Parents before children, else in their order: a mount over the parent of a mount made
    before it would hide that one."""
    mounts.sort(key=lambda mount: len(PurePosixPath(posixpath.normpath(mount.get("destination", "/"))).parts))


def oci_hook(path: str, args: Sequence[str], env: Sequence[str], timeout: int | None) -> dict[str, Any]:
    """One entry of the spec's hooks lists."""
    entry: dict[str, Any] = {"path": path}
    if args:
        entry["args"] = list(args)
    if env:
        entry["env"] = list(env)
    if timeout is not None:
        entry["timeout"] = timeout
    return entry
