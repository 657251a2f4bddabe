"""Capabilities, seccomp (pycri's default profile, profile files) and AppArmor choices."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.oci import seccomp, seccomp_default
from pycri.oci.spec import SpecError
from pycri.oci.spec_security import (
    ALL_CAPABILITIES,
    APPARMOR_DEFAULT_PROFILE,
    DEFAULT_CAPABILITIES,
    apparmor_profile,
    capability_names_from_mask,
    container_capabilities,
    seccomp_spec,
)
from tests.unit.test_oci_spec import HOST, build, container_config

pytestmark = pytest.mark.unit

FIELD = "linux.security_context.capabilities"
RUNTIME_CAPS = HOST.capabilities
Profile = api_pb2.SecurityProfile


def caps(add: list[str] = [], drop: list[str] = [], ambient: list[str] = []) -> dict[str, list[str]]:  # noqa: B006
    requested = api_pb2.Capability(add_capabilities=add, drop_capabilities=drop, add_ambient_capabilities=ambient)
    return container_capabilities(requested, False, RUNTIME_CAPS, FIELD)


def test_default_capabilities() -> None:
    result = caps()
    assert set(result["bounding"]) == DEFAULT_CAPABILITIES
    assert result["bounding"] == result["effective"] == result["permitted"]
    assert result["inheritable"] == result["ambient"] == []
    assert result["bounding"] == sorted(result["bounding"], key=ALL_CAPABILITIES.index)


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        (
            ["NET_ADMIN", "CAP_SYS_TIME", "sys_nice"],
            [],
            DEFAULT_CAPABILITIES | {"CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_SYS_NICE"},
        ),
        ([], ["CHOWN", "cap_kill"], DEFAULT_CAPABILITIES - {"CAP_CHOWN", "CAP_KILL"}),
        (["NET_ADMIN"], ["NET_ADMIN"], DEFAULT_CAPABILITIES),
        ([], ["ALL"], set()),
        (["NET_BIND_SERVICE"], ["ALL"], {"CAP_NET_BIND_SERVICE"}),
        (["all"], [], set(RUNTIME_CAPS)),
        (["ALL"], ["SYS_ADMIN"], set(RUNTIME_CAPS) - {"CAP_SYS_ADMIN"}),
        (["ALL"], ["ALL"], set()),
    ],
)
def test_add_and_drop(add: list[str], drop: list[str], expected: set[str]) -> None:
    assert set(caps(add, drop)["bounding"]) == expected


@pytest.mark.parametrize(
    ("add", "drop", "ambient", "message"),
    [
        (["CAP_FOO"], [], [], f"{FIELD}.add_capabilities: unknown capability CAP_FOO"),
        ([], ["bogus"], [], f"{FIELD}.drop_capabilities: unknown capability bogus"),
        ([], [], ["NOPE"], f"{FIELD}.add_ambient_capabilities: unknown capability NOPE"),
    ],
)
def test_unknown_capability_names(add: list[str], drop: list[str], ambient: list[str], message: str) -> None:
    with pytest.raises(SpecError) as raised:
        caps(add, drop, ambient)
    assert str(raised.value) == message


def test_ambient_capabilities_are_also_inheritable_and_granted() -> None:
    result = caps(drop=["ALL"], ambient=["NET_BIND_SERVICE"])
    assert result == {
        "bounding": ["CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }


def test_privileged_gets_the_runtime_capabilities_whatever_is_asked() -> None:
    requested = api_pb2.Capability(drop_capabilities=["ALL"])
    assert container_capabilities(requested, True, RUNTIME_CAPS, FIELD)["bounding"] == list(RUNTIME_CAPS)


def test_capability_names_from_mask() -> None:
    assert capability_names_from_mask(0) == ()
    assert capability_names_from_mask(0b101) == ("CAP_CHOWN", "CAP_DAC_READ_SEARCH")
    assert capability_names_from_mask(0x1FFFEFFFFFF) == tuple(n for n in ALL_CAPABILITIES if n != "CAP_SYS_RESOURCE")
    assert len(capability_names_from_mask(2**64 - 1)) == len(ALL_CAPABILITIES)


def _context(**fields: Any) -> api_pb2.LinuxContainerSecurityContext:
    context = api_pb2.LinuxContainerSecurityContext()
    for key, value in fields.items():
        if isinstance(value, api_pb2.SecurityProfile):
            getattr(context, key).CopyFrom(value)
        else:
            setattr(context, key, value)
    return context


def _seccomp(context: api_pb2.LinuxContainerSecurityContext, root: Path | None = None) -> dict[str, Any] | None:
    return seccomp_spec(context, sorted(DEFAULT_CAPABILITIES), root, HOST, "linux.security_context")


def _allowed_names(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }


def test_no_seccomp_choice_means_unconfined() -> None:
    assert _seccomp(_context()) is None
    assert _seccomp(_context(seccomp=Profile(profile_type=Profile.Unconfined))) is None
    assert _seccomp(_context(seccomp_profile_path="unconfined")) is None


@pytest.mark.parametrize(
    "context",
    [
        _context(seccomp=Profile(profile_type=Profile.RuntimeDefault)),
        _context(seccomp_profile_path="runtime/default"),
        _context(seccomp_profile_path="docker/default"),
        # The structured field wins over the deprecated string.
        _context(seccomp=Profile(profile_type=Profile.RuntimeDefault), seccomp_profile_path="unconfined"),
    ],
)
def test_runtime_default_is_pycris_profile(context: api_pb2.LinuxContainerSecurityContext) -> None:
    assert _seccomp(context) == seccomp.default_profile(sorted(DEFAULT_CAPABILITIES), "x86_64")


def test_privileged_runs_without_seccomp() -> None:
    assert _seccomp(_context(privileged=True, seccomp=Profile(profile_type=Profile.RuntimeDefault))) is None


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (_context(seccomp_profile_path="mystery"), "linux.security_context.seccomp_profile_path: unknown profile"),
        (
            _context(seccomp=Profile(profile_type=Profile.RuntimeDefault, localhost_ref="/x.json")),
            "linux.security_context.seccomp.localhost_ref: only allowed with the Localhost profile type",
        ),
        (
            _context(seccomp=Profile(profile_type=Profile.Localhost)),
            "linux.security_context.seccomp.localhost_ref: required",
        ),
        (
            _context(seccomp=Profile(profile_type=Profile.Localhost, localhost_ref="rel.json")),
            "'rel.json' is relative and no seccomp profile root is set",
        ),
        (
            _context(seccomp=Profile(profile_type=Profile.Localhost, localhost_ref="/no/such/profile.json")),
            "linux.security_context.seccomp: profile /no/such/profile.json does not exist",
        ),
    ],
)
def test_seccomp_refusals(context: api_pb2.LinuxContainerSecurityContext, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _seccomp(context)


DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}


def test_localhost_profile_absolute_relative_and_legacy(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "deny.json").write_text(json.dumps(DENY_MKDIR))
    expected = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    absolute = Profile(profile_type=Profile.Localhost, localhost_ref=str(tmp_path / "profiles" / "deny.json"))
    assert _seccomp(_context(seccomp=absolute)) == expected
    relative = Profile(profile_type=Profile.Localhost, localhost_ref="profiles/deny.json")
    assert _seccomp(_context(seccomp=relative), root=tmp_path) == expected
    prefixed = Profile(profile_type=Profile.Localhost, localhost_ref="localhost/profiles/deny.json")
    assert _seccomp(_context(seccomp=prefixed), root=tmp_path) == expected
    assert _seccomp(_context(seccomp_profile_path="localhost/profiles/deny.json"), root=tmp_path) == expected
    escaping = Profile(profile_type=Profile.Localhost, localhost_ref="../outside.json")
    with pytest.raises(SpecError, match="leaves the seccomp profile root"):
        _seccomp(_context(seccomp=escaping), root=tmp_path / "profiles")


def test_unreadable_profiles_are_spec_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    for name, message in (("bad.json", "is not valid JSON"), ("list.json", "a profile must be a JSON object")):
        profile = Profile(profile_type=Profile.Localhost, localhost_ref=str(tmp_path / name))
        with pytest.raises(SpecError, match=message):
            _seccomp(_context(seccomp=profile))


def test_default_profile_shape() -> None:
    profile = seccomp.default_profile(sorted(DEFAULT_CAPABILITIES), "x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = profile["syscalls"][0]["names"]
    assert names == sorted(set(names))
    allowed = _allowed_names(profile)
    assert {"read", "write", "openat", "execve", "clock_gettime", "socket", "arch_prctl", "chroot"} <= allowed
    refused = {"unshare", "mount", "setns", "keyctl", "add_key", "kexec_load", "io_uring_setup", "bpf", "reboot"}
    assert allowed.isdisjoint(refused)
    assert allowed.isdisjoint({"clone", "clone3", "personality"})  # only under conditions


def test_default_profile_restricts_clone_and_personality_without_sys_admin() -> None:
    rules = seccomp.default_profile(sorted(DEFAULT_CAPABILITIES), "x86_64")["syscalls"]
    clone = [rule for rule in rules if rule["names"] == ["clone"]]
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in rules
    personalities = [rule["args"][0]["value"] for rule in rules if rule["names"] == ["personality"]]
    assert personalities == list(seccomp_default.ALLOWED_PERSONALITIES)


def test_default_profile_with_capabilities_allows_their_syscalls() -> None:
    profile = seccomp.default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], "x86_64")
    assert {"unshare", "mount", "setns", "clone", "clone3", "kcmp", "pidfd_getfd"} <= _allowed_names(profile)
    assert not [rule for rule in profile["syscalls"] if rule["names"] in (["clone"], ["clone3"])]
    assert "chroot" not in _allowed_names(seccomp.default_profile([], "x86_64"))


def test_default_profile_on_aarch64() -> None:
    profile = seccomp.default_profile([], "aarch64")
    assert profile["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "set_tls" in _allowed_names(profile)
    assert "arch_prctl" not in _allowed_names(profile)


def test_docker_form_profile_conditions() -> None:
    docker_profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        ],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
            {"name": "write", "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.1"}},
            {"names": ["old_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["not_x86"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["SCMP_ARCH_X86_64"]}},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 97,
                "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    converted = seccomp.convert_profile(docker_profile, ["CAP_CHOWN"], "x86_64", "6.1.0-13-amd64")
    assert converted == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["old_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 97,
                "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 40, "valueTwo": 0}],
            },
        ],
    }
    with_admin = seccomp.convert_profile(docker_profile, ["CAP_SYS_ADMIN"], "x86_64", "6.1")
    assert ["mount"] in [rule["names"] for rule in with_admin["syscalls"]]
    assert ["clone"] not in [rule["names"] for rule in with_admin["syscalls"]]


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"syscalls": []}, "defaultAction: unknown action None"),
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action 'SCMP_ACT_MAYBE'"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [], "archMap": []}, "use one"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls must be a list"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}, r"syscalls\[0\] names no"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read"}]}, "must be a list of strings"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{}]}],
            },
            r"args\[0\].index must be 0 to 5",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "EQ"}]}],
            },
            "unknown operator 'EQ'",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": -1}, "defaultErrnoRet must be"),
    ],
)
def test_malformed_profiles(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(seccomp.ProfileError, match=message):
        seccomp.convert_profile(profile, [], "x86_64", "6.1")


def test_oci_form_profile_passes_through() -> None:
    oci_profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
    }
    assert seccomp.convert_profile(oci_profile, [], "x86_64", "6.1") == oci_profile


APPARMOR_HOST = replace(HOST, apparmor_enabled=True, apparmor_profiles=frozenset({APPARMOR_DEFAULT_PROFILE, "custom"}))


def _apparmor(context: api_pb2.LinuxContainerSecurityContext, host: Any = HOST) -> str | None:
    return apparmor_profile(context, context.apparmor_profile, host, "linux.security_context")


def test_apparmor_on_a_host_without_it() -> None:
    """RuntimeDefault runs unconfined by AppArmor (the status says so); a Localhost profile is refused."""
    assert _apparmor(_context()) is None
    assert _apparmor(_context(apparmor=Profile(profile_type=Profile.Unconfined))) is None
    assert _apparmor(_context(apparmor_profile="unconfined")) is None
    assert _apparmor(_context(apparmor=Profile(profile_type=Profile.RuntimeDefault))) is None
    assert _apparmor(_context(apparmor_profile="runtime/default")) is None
    for context in (
        _context(apparmor=Profile(profile_type=Profile.Localhost, localhost_ref="custom")),
        _context(apparmor_profile="localhost/custom"),
    ):
        with pytest.raises(SpecError, match="linux.security_context.apparmor: AppArmor is not enabled on this host"):
            _apparmor(context)


def test_apparmor_on_a_host_with_it() -> None:
    assert _apparmor(_context(), APPARMOR_HOST) == APPARMOR_DEFAULT_PROFILE
    assert _apparmor(_context(apparmor=Profile(profile_type=Profile.RuntimeDefault)), APPARMOR_HOST) == "pycri-default"
    assert _apparmor(_context(privileged=True), APPARMOR_HOST) is None
    assert _apparmor(_context(apparmor=Profile(profile_type=Profile.Unconfined)), APPARMOR_HOST) is None
    localhost = Profile(profile_type=Profile.Localhost, localhost_ref="localhost/custom")
    assert _apparmor(_context(apparmor=localhost), APPARMOR_HOST) == "custom"
    assert _apparmor(_context(apparmor_profile="localhost/custom"), APPARMOR_HOST) == "custom"
    missing = Profile(profile_type=Profile.Localhost, localhost_ref="absent")
    with pytest.raises(SpecError, match="AppArmor profile 'absent' is not loaded"):
        _apparmor(_context(apparmor=missing), APPARMOR_HOST)
    without_default = replace(APPARMOR_HOST, apparmor_profiles=frozenset())
    with pytest.raises(SpecError, match="the default profile pycri-default is not loaded"):
        _apparmor(_context(), without_default)  # never silently unconfined where AppArmor is on


def test_container_spec_carries_the_choices(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    context = config.linux.security_context
    context.seccomp.profile_type = Profile.RuntimeDefault
    context.capabilities.add_capabilities.append("SYS_ADMIN")
    spec = build(tmp_path, config, host=APPARMOR_HOST)
    assert spec["process"]["apparmorProfile"] == APPARMOR_DEFAULT_PROFILE
    assert "unshare" in _allowed_names(spec["linux"]["seccomp"])
    with pytest.raises(SpecError, match="^linux.security_context.capabilities.add_capabilities: unknown capability"):
        context.capabilities.add_capabilities.append("CAP_FOO")
        build(tmp_path, config)
