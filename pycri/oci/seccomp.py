"""Seccomp profiles for linux.seccomp: pycri's RuntimeDefault profile and profiles loaded from files.

Profile files may be in the OCI form or in Docker's form (archMap, includes/excludes by capability,
architecture and kernel version), which kubelet users write; both become the OCI form here,
evaluated for this machine and the container's capabilities.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pycri.oci import seccomp_default

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}
)
EPERM = 1

# The seccomp architectures a process of this machine can use: the native one first, then the
# compat ones (32-bit x86 and x32 on x86_64, 32-bit ARM on aarch64).
SECCOMP_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "i686": ("SCMP_ARCH_X86",),
    "i386": ("SCMP_ARCH_X86",),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}
# Docker-form profiles name architectures in includes/excludes the way Go does.
GO_ARCHITECTURES = {
    "x86_64": "amd64",
    "i686": "386",
    "i386": "386",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class ProfileError(ValueError):
    """A seccomp profile file that is missing, unreadable or malformed."""


def _allow(names: Collection[str], *args: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": sorted(names), "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = list(args)
    return rule


def default_profile(capabilities: Collection[str], machine: str) -> dict[str, Any]:
    """pycri's RuntimeDefault profile for a process holding `capabilities` on this `machine`."""
    held = set(capabilities)
    allowed = set(seccomp_default.ALWAYS_ALLOWED) | set(seccomp_default.ALLOWED_ON_MACHINE.get(machine, ()))
    for capability, names in seccomp_default.ALLOWED_WITH_CAPABILITY.items():
        if capability in held:
            allowed.update(names)
    syscalls = [_allow(allowed)]
    # Conditions within one rule are ANDed, so each permitted value is a rule of its own.
    syscalls.extend(
        _allow(["personality"], {"index": 0, "value": value, "op": "SCMP_CMP_EQ"})
        for value in seccomp_default.ALLOWED_PERSONALITIES
    )
    if "CAP_SYS_ADMIN" not in held:
        flags_index = 1 if machine == "s390x" else 0  # s390 swaps clone's first two arguments
        no_namespaces = {
            "index": flags_index,
            "value": seccomp_default.CLONE_NAMESPACE_FLAGS,
            "valueTwo": 0,
            "op": "SCMP_CMP_MASKED_EQ",
        }
        syscalls.append(_allow(["clone"], no_namespaces))
        # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc fall back to clone.
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": seccomp_default.ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(SECCOMP_ARCHITECTURES.get(machine, ())),
        "syscalls": syscalls,
    }


def load_profile(path: Path, capabilities: Collection[str], machine: str, kernel: str) -> dict[str, Any]:
    """Read a profile file (OCI or Docker form) and return it in the OCI form for this container."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"profile {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read profile {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"profile {path} is not valid JSON: {err}") from err
    try:
        return convert_profile(data, capabilities, machine, kernel)
    except ProfileError as err:
        raise ProfileError(f"profile {path}: {err}") from err


def _kernel_version(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        raise ProfileError(f"cannot read kernel version {text!r}")
    return tuple(int(part) for part in match.groups() if part is not None)


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProfileError(f"{what} must be a list of strings")
    return value


def _condition_holds(condition: Any, capabilities: Collection[str], machine: str, kernel: str, what: str) -> bool:
    """Docker's includes: every listed capability held, this machine among the arches, kernel new enough."""
    if not isinstance(condition, dict):
        raise ProfileError(f"{what} must be an object")
    caps = _string_list(condition.get("caps") or [], f"{what}.caps")
    arches = _string_list(condition.get("arches") or [], f"{what}.arches")
    names_of_machine = {GO_ARCHITECTURES.get(machine, machine), *SECCOMP_ARCHITECTURES.get(machine, ())}
    if caps and not all(cap in capabilities for cap in caps):
        return False
    if arches and names_of_machine.isdisjoint(arches):
        return False
    min_kernel = condition.get("minKernel")
    return not (min_kernel and _kernel_version(kernel) < _kernel_version(str(min_kernel)))


def _condition_excludes(condition: Any, capabilities: Collection[str], machine: str, what: str) -> bool:
    """Docker's excludes: any listed capability held, or this machine among the arches."""
    if not isinstance(condition, dict):
        raise ProfileError(f"{what} must be an object")
    caps = _string_list(condition.get("caps") or [], f"{what}.caps")
    arches = _string_list(condition.get("arches") or [], f"{what}.arches")
    names_of_machine = {GO_ARCHITECTURES.get(machine, machine), *SECCOMP_ARCHITECTURES.get(machine, ())}
    return any(cap in capabilities for cap in caps) or not names_of_machine.isdisjoint(arches)


def _action(value: Any, what: str) -> str:
    if value not in ACTIONS:
        raise ProfileError(f"{what}: unknown action {value!r}")
    return str(value)


def _argument(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(f"{what} must be an object")
    index, op = value.get("index"), value.get("op")
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise ProfileError(f"{what}.index must be 0 to 5")
    if op not in OPERATORS:
        raise ProfileError(f"{what}.op: unknown operator {op!r}")
    argument: dict[str, Any] = {"index": index, "op": op}
    for key in ("value", "valueTwo"):
        number = value.get(key, 0)
        if not isinstance(number, int) or not 0 <= number < 2**64:
            raise ProfileError(f"{what}.{key} must be an unsigned 64-bit integer")
        argument[key] = number
    return argument


def _syscall_rule(
    entry: Any, capabilities: Collection[str], machine: str, kernel: str, what: str
) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        raise ProfileError(f"{what} must be an object")
    if "includes" in entry and not _condition_holds(
        entry["includes"], capabilities, machine, kernel, f"{what}.includes"
    ):
        return None
    if "excludes" in entry and _condition_excludes(entry["excludes"], capabilities, machine, f"{what}.excludes"):
        return None
    names = entry.get("names") or ([entry["name"]] if "name" in entry else [])
    if not _string_list(names, f"{what}.names"):
        raise ProfileError(f"{what} names no syscall")
    rule: dict[str, Any] = {"names": list(names), "action": _action(entry.get("action"), f"{what}.action")}
    if "errnoRet" in entry:
        if not isinstance(entry["errnoRet"], int) or entry["errnoRet"] < 0:
            raise ProfileError(f"{what}.errnoRet must be a non-negative integer")
        rule["errnoRet"] = entry["errnoRet"]
    args = entry.get("args") or []
    if not isinstance(args, list):
        raise ProfileError(f"{what}.args must be a list")
    if args:
        rule["args"] = [_argument(arg, f"{what}.args[{number}]") for number, arg in enumerate(args)]
    return rule


def _architectures(data: dict[str, Any], machine: str) -> list[str]:
    if "architectures" in data and "archMap" in data:
        raise ProfileError("both architectures and archMap are given; use one")
    if "archMap" not in data:
        return list(_string_list(data.get("architectures") or [], "architectures"))
    arch_map = data["archMap"]
    if not isinstance(arch_map, list):
        raise ProfileError("archMap must be a list")
    native = SECCOMP_ARCHITECTURES.get(machine, ("",))[0]
    for number, item in enumerate(arch_map):
        if not isinstance(item, dict):
            raise ProfileError(f"archMap[{number}] must be an object")
        if item.get("architecture") == native:
            return [native, *_string_list(item.get("subArchitectures") or [], f"archMap[{number}].subArchitectures")]
    return []


def convert_profile(data: Any, capabilities: Collection[str], machine: str, kernel: str) -> dict[str, Any]:
    """A profile's parsed JSON in the OCI form, with Docker's conditions decided for this container."""
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a JSON object")
    profile: dict[str, Any] = {"defaultAction": _action(data.get("defaultAction"), "defaultAction")}
    if "defaultErrnoRet" in data:
        if not isinstance(data["defaultErrnoRet"], int) or data["defaultErrnoRet"] < 0:
            raise ProfileError("defaultErrnoRet must be a non-negative integer")
        profile["defaultErrnoRet"] = data["defaultErrnoRet"]
    architectures = _architectures(data, machine)
    if architectures:
        profile["architectures"] = architectures
    if data.get("flags"):
        profile["flags"] = _string_list(data["flags"], "flags")
    for key in ("listenerPath", "listenerMetadata"):
        if data.get(key):
            if not isinstance(data[key], str):
                raise ProfileError(f"{key} must be a string")
            profile[key] = data[key]
    entries = data.get("syscalls")
    if entries is None:
        entries = []
    elif not isinstance(entries, list):
        raise ProfileError("syscalls must be a list")
    rules = [_syscall_rule(entry, capabilities, machine, kernel, f"syscalls[{n}]") for n, entry in enumerate(entries)]
    profile["syscalls"] = [rule for rule in rules if rule is not None]
    return profile
