"""container_spec and pause_spec: process, user, namespaces, annotations, refusals."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.oci.spec import (
    ContainerSpecInput,
    PauseSpecInput,
    SandboxPaths,
    SpecError,
    container_spec,
    pause_spec,
)
from pycri.oci.spec_host import HostFacts
from pycri.oci.spec_security import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from tests.unit.test_users import write_rootfs

pytestmark = pytest.mark.unit

# A cgroup v1 x86_64 host without AppArmor whose pycri lacks CAP_SYS_RESOURCE, like the CI machine.
HOST = HostFacts(
    cgroup_unified=False,
    swap_limit=True,
    hugetlb=True,
    apparmor_enabled=False,
    apparmor_profiles=frozenset(),
    capabilities=tuple(name for name in ALL_CAPABILITIES if name != "CAP_SYS_RESOURCE"),
    machine="x86_64",
    kernel="6.1.0",
)
CONTEXT = "linux.security_context"


def sandbox_paths(base: Path, **namespaces: Path | None) -> SandboxPaths:
    paths = SandboxPaths(
        netns=base / "ns" / "net",
        ipc=base / "ns" / "ipc",
        uts=base / "ns" / "uts",
        pid=None,
        hostname=base / "pod" / "hostname",
        hosts=base / "pod" / "hosts",
        resolv_conf=base / "pod" / "resolv.conf",
        shm=base / "pod" / "shm",
    )
    return replace(paths, **namespaces)


def container_config(**fields: Any) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app"), image=api_pb2.ImageSpec(image="docker.io/library/app:1")
    )
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        else:
            setattr(config, key, value)
    return config


def sandbox_config(privileged: bool = False) -> api_pb2.PodSandboxConfig:
    sandbox = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="prod", uid="pod-uid", attempt=0),
        hostname="web-0",
        log_directory="/var/log/pods/prod_web_pod-uid",
    )
    sandbox.linux.security_context.privileged = privileged
    return sandbox


def make_input(
    base: Path,
    config: api_pb2.ContainerConfig | None = None,
    image: dict[str, Any] | None = None,
    **overrides: Any,
) -> ContainerSpecInput:
    """A spec input over a rootfs at base/rootfs (made on first use), with a hand-made host."""
    rootfs = base / "rootfs"
    if not rootfs.exists():
        write_rootfs(rootfs)
    fields: dict[str, Any] = {
        "container_id": "ctr-1",
        "sandbox_id": "sbx-1",
        "config": config if config is not None else container_config(args=["/bin/app"]),
        "sandbox": sandbox_config(),
        "image_config": {"config": image if image is not None else {"Env": ["PATH=/usr/bin:/bin"]}},
        "rootfs": rootfs,
        "sandbox_paths": sandbox_paths(base),
        "cgroups_path": "/pycri/pod-sbx-1/ctr-1",
        "runtime_oom_score_adj": -500,
        "seccomp_profile_root": None,
        "host": HOST,
    }
    fields.update(overrides)
    return ContainerSpecInput(**fields)


def build(base: Path, config: api_pb2.ContainerConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    return container_spec(make_input(base, config, **kwargs))


@pytest.mark.parametrize(
    ("command", "args", "image", "expected"),
    [
        ([], [], {"Entrypoint": ["/entry"], "Cmd": ["cmd"]}, ["/entry", "cmd"]),
        ([], ["a1"], {"Entrypoint": ["/entry"], "Cmd": ["cmd"]}, ["/entry", "a1"]),
        (["/c"], [], {"Entrypoint": ["/entry"], "Cmd": ["cmd"]}, ["/c"]),
        (["/c"], ["a1", "a2"], {"Entrypoint": ["/entry"], "Cmd": ["cmd"]}, ["/c", "a1", "a2"]),
        ([], [], {"Cmd": ["/cmd", "x"]}, ["/cmd", "x"]),
        ([], [], {"Entrypoint": [""], "Cmd": ["/cmd"]}, ["/cmd"]),
        ([], ["/arg"], {"Entrypoint": None, "Cmd": None}, ["/arg"]),
    ],
)
def test_process_args_merge_cri_and_image(
    tmp_path: Path, command: list[str], args: list[str], image: dict[str, Any], expected: list[str]
) -> None:
    spec = build(tmp_path, container_config(command=command, args=args), image=image)
    assert spec["process"]["args"] == expected


@pytest.mark.parametrize("image", [{}, {"Entrypoint": [""]}, {"Entrypoint": None, "Cmd": []}])
def test_no_command_at_all_is_refused(tmp_path: Path, image: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="^command: "):
        build(tmp_path, container_config(), image=image)


def test_env_order_overrides_and_hostname(tmp_path: Path) -> None:
    config = container_config(
        args=["/app"],
        envs=[
            api_pb2.KeyValue(key="B", value=b"cri"),
            api_pb2.KeyValue(key="C", value="snow ☃".encode()),
            api_pb2.KeyValue(key="EMPTY", value=b""),
        ],
    )
    spec = build(tmp_path, config, image={"Env": ["A=1", "B=image", "PATH=/x", "HOSTNAME=image-host"]})
    assert spec["process"]["env"] == ["HOSTNAME=image-host", "A=1", "B=cri", "PATH=/x", "C=snow ☃", "EMPTY="]


def test_env_gets_default_path_and_node_hostname(tmp_path: Path) -> None:
    sandbox = sandbox_config()
    sandbox.hostname = ""
    spec = build(tmp_path, container_config(args=["/app"]), image={}, sandbox=sandbox)
    assert spec["process"]["env"] == [
        f"HOSTNAME={socket.gethostname()}",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (api_pb2.KeyValue(key="", value=b"x"), r"envs\[0\].key"),
        (api_pb2.KeyValue(key="A=B", value=b"x"), r"envs\[0\].key"),
        (api_pb2.KeyValue(key="A", value=b"\xff"), r"envs\[0\].value: not UTF-8"),
    ],
)
def test_bad_env_is_refused(tmp_path: Path, variable: api_pb2.KeyValue, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(tmp_path, container_config(args=["/app"], envs=[variable]))


def test_working_dir_from_cri_then_image_then_root(tmp_path: Path) -> None:
    (tmp_path / "rootfs" / "srv").mkdir(parents=True)
    assert build(tmp_path, container_config(args=["/a"], working_dir="/srv"))["process"]["cwd"] == "/srv"
    assert build(tmp_path, container_config(args=["/a"]), image={"WorkingDir": "/w"})["process"]["cwd"] == "/w"
    assert build(tmp_path, container_config(args=["/a"]), image={})["process"]["cwd"] == "/"


@pytest.mark.parametrize(
    ("working_dir", "image", "message"),
    [
        ("relative", {}, "^working_dir: 'relative' is not absolute"),
        ("", {"WorkingDir": "rel"}, "^image config WorkingDir: 'rel' is not absolute"),
        ("/etc/passwd", {}, "^working_dir: '/etc/passwd' is not a directory in the image"),
    ],
)
def test_bad_working_dir_is_refused(tmp_path: Path, working_dir: str, image: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(tmp_path, container_config(args=["/a"], working_dir=working_dir), image=image)


def _with_context(**security: Any) -> api_pb2.ContainerConfig:
    config = container_config(args=["/app"])
    context = config.linux.security_context
    for key, value in security.items():
        if key in ("run_as_user", "run_as_group"):
            getattr(context, key).value = value
        elif isinstance(value, list):
            getattr(context, key).extend(value)
        else:
            setattr(context, key, value)
    return config


@pytest.mark.parametrize(
    ("image_user", "security", "expected"),
    [
        ("", {}, {"uid": 0, "gid": 0, "additionalGids": [0]}),
        ("app", {}, {"uid": 1000, "gid": 1001, "additionalGids": [1001, 10, 44]}),
        ("app:audio", {}, {"uid": 1000, "gid": 29, "additionalGids": [29, 10, 44]}),
        ("root", {"run_as_username": "other"}, {"uid": 1002, "gid": 1002, "additionalGids": [1002, 10, 29]}),
        ("root", {"run_as_user": 1000}, {"uid": 1000, "gid": 1001, "additionalGids": [1001, 10, 44]}),
        ("app:audio", {"run_as_user": 5000}, {"uid": 5000, "gid": 0, "additionalGids": [0]}),
        ("root", {"run_as_user": 1000, "run_as_group": 7}, {"uid": 1000, "gid": 7, "additionalGids": [7, 10, 44]}),
        ("root", {"run_as_username": "app", "run_as_group": 8}, {"uid": 1000, "gid": 8, "additionalGids": [8, 10, 44]}),
        (
            "app",
            {"supplemental_groups": [44, 3000, 3000, 1001]},
            {"uid": 1000, "gid": 1001, "additionalGids": [1001, 10, 44, 3000]},
        ),
        (
            "app",
            {"supplemental_groups": [3000], "supplemental_groups_policy": api_pb2.Strict},
            {"uid": 1000, "gid": 1001, "additionalGids": [1001, 3000]},
        ),
    ],
)
def test_process_user(tmp_path: Path, image_user: str, security: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = build(tmp_path, _with_context(**security), image={"User": image_user})
    assert spec["process"]["user"] == expected


@pytest.mark.parametrize(
    ("image_user", "security", "message"),
    [
        ("", {"run_as_group": 5}, f"^{CONTEXT}.run_as_group: set without run_as_user or run_as_username"),
        ("", {"run_as_username": "ghost"}, f"^{CONTEXT}.run_as_username: user 'ghost' is not in"),
        ("ghost", {}, "^image config User: user 'ghost' is not in"),
        ("", {"run_as_user": -1}, f"^{CONTEXT}.run_as_user: -1 is out of range"),
        ("", {"run_as_user": 1, "run_as_group": 2**32}, f"^{CONTEXT}.run_as_group: 4294967296 is out of range"),
        ("", {"supplemental_groups": [-5]}, f"^{CONTEXT}.supplemental_groups: -5 is out of range"),
        ("", {"supplemental_groups_policy": 7}, f"^{CONTEXT}.supplemental_groups_policy: unknown value 7"),
    ],
)
def test_bad_user_is_refused(tmp_path: Path, image_user: str, security: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(tmp_path, _with_context(**security), image={"User": image_user})


def test_basic_fields(tmp_path: Path) -> None:
    config = _with_context(readonly_rootfs=True, no_new_privs=True)
    config.tty = True
    spec = build(tmp_path, config)
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert spec["process"]["terminal"] is True
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["linux"]["cgroupsPath"] == "/pycri/pod-sbx-1/ctr-1"
    assert spec["hostname"] == "web-0"
    assert "apparmorProfile" not in spec["process"]
    assert "seccomp" not in spec["linux"]
    json.dumps(spec)


@pytest.mark.parametrize(("requested", "expected"), [(0, 0), (-999, -500), (-500, -500), (300, 300)])
def test_oom_score_adj_is_never_below_the_runtime(tmp_path: Path, requested: int, expected: int) -> None:
    config = container_config(args=["/app"])
    config.linux.resources.oom_score_adj = requested
    assert build(tmp_path, config)["process"]["oomScoreAdj"] == expected


def test_annotations(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    config.annotations["team"] = "blue"
    config.annotations["run.oci.keep_original_groups"] = "1"  # runtimes act on these: not let through
    config.annotations["io.kubernetes.cri.container-type"] = "forged"
    assert build(tmp_path, config, allowed_annotations=("team", "io.kubernetes.cri.*"))["annotations"] == {
        "team": "blue",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "docker.io/library/app:1",
        "io.kubernetes.cri.sandbox-id": "sbx-1",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "prod",
        "io.kubernetes.cri.sandbox-uid": "pod-uid",
    }


def test_no_user_annotation_reaches_the_runtime_unless_allowed(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    config.annotations["run.oci.systemd.force_cgroup_v1"] = "/sys/fs/cgroup"
    config.annotations["team"] = "blue"
    annotations = build(tmp_path, config)["annotations"]
    assert "run.oci.systemd.force_cgroup_v1" not in annotations and "team" not in annotations
    assert annotations["io.kubernetes.cri.container-type"] == "container"


def test_namespaces_join_the_pod_paths(tmp_path: Path) -> None:
    spec = build(tmp_path)
    assert spec["linux"]["namespaces"] == [
        {"type": "mount"},
        {"type": "pid"},
        {"type": "network", "path": str(tmp_path / "ns" / "net")},
        {"type": "ipc", "path": str(tmp_path / "ns" / "ipc")},
        {"type": "uts", "path": str(tmp_path / "ns" / "uts")},
    ]


def test_host_namespaces_are_left_out_and_no_hostname_is_set(tmp_path: Path) -> None:
    paths = sandbox_paths(tmp_path, netns=None, ipc=None, uts=None)
    config = container_config(args=["/app"])
    config.linux.security_context.namespace_options.pid = api_pb2.NODE
    spec = build(tmp_path, config, sandbox_paths=paths)
    assert spec["linux"]["namespaces"] == [{"type": "mount"}]
    assert "hostname" not in spec


def _pid_entry(spec: dict[str, Any]) -> list[dict[str, str]]:
    return [entry for entry in spec["linux"]["namespaces"] if entry["type"] == "pid"]


def test_pid_namespace_modes(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    options = config.linux.security_context.namespace_options
    shared = sandbox_paths(tmp_path, pid=Path("/proc/42/ns/pid"))

    options.pid = api_pb2.POD
    assert _pid_entry(build(tmp_path, config, sandbox_paths=shared)) == [{"type": "pid", "path": "/proc/42/ns/pid"}]
    assert _pid_entry(build(tmp_path, config)) == [{"type": "pid"}]
    host_pid_sandbox = sandbox_config()
    host_pid_sandbox.linux.security_context.namespace_options.pid = api_pb2.NODE
    assert _pid_entry(build(tmp_path, config, sandbox=host_pid_sandbox)) == []

    options.pid = api_pb2.TARGET
    target = Path("/proc/77/ns/pid")
    assert _pid_entry(build(tmp_path, config, target_pid_namespace=target)) == [{"type": "pid", "path": str(target)}]
    with pytest.raises(SpecError, match=f"^{CONTEXT}.namespace_options.pid: TARGET"):
        build(tmp_path, config)


def test_cgroup_namespace_only_on_unified_hosts_for_unprivileged(tmp_path: Path) -> None:
    unified = replace(HOST, cgroup_unified=True)
    assert {"type": "cgroup"} in build(tmp_path, host=unified)["linux"]["namespaces"]
    assert {"type": "cgroup"} not in build(tmp_path)["linux"]["namespaces"]
    privileged = _with_context(privileged=True)
    spec = build(tmp_path, privileged, host=unified, sandbox=sandbox_config(privileged=True))
    assert {"type": "cgroup"} not in spec["linux"]["namespaces"]


def test_privileged_needs_a_privileged_sandbox(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=f"^{CONTEXT}.privileged: "):
        build(tmp_path, _with_context(privileged=True))


def test_privileged_container(tmp_path: Path) -> None:
    config = _with_context(privileged=True, masked_paths=["/proc/kcore"])
    config.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    spec = build(tmp_path, config, sandbox=sandbox_config(privileged=True))
    assert spec["process"]["capabilities"]["bounding"] == list(HOST.capabilities)
    assert spec["linux"]["maskedPaths"] == []
    assert spec["linux"]["readonlyPaths"] == []
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(device["path"] == "/dev/null" for device in spec["linux"]["devices"])
    sysfs = next(mount for mount in spec["mounts"] if mount["destination"] == "/sys")
    assert "rw" in sysfs["options"]


def test_unprivileged_container_has_default_caps_and_device_rules(tmp_path: Path) -> None:
    spec = build(tmp_path)
    assert set(spec["process"]["capabilities"]["bounding"]) == DEFAULT_CAPABILITIES
    assert spec["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert "devices" not in spec["linux"]


def test_a_user_namespace_the_pod_does_not_have_is_refused(tmp_path: Path) -> None:
    config = container_config(args=["/app"])
    config.linux.security_context.namespace_options.userns_options.mode = api_pb2.POD
    with pytest.raises(SpecError, match="userns_options.uids: exactly one mapping"):
        build(tmp_path, config)
    mapping = api_pb2.IDMapping(container_id=0, host_id=100000, length=65536)
    config.linux.security_context.namespace_options.userns_options.uids.append(mapping)
    config.linux.security_context.namespace_options.userns_options.gids.append(mapping)
    with pytest.raises(SpecError, match="userns_options: the pod sandbox runs in the host's user namespace"):
        build(tmp_path, config)
    config.linux.security_context.namespace_options.userns_options.Clear()
    config.linux.security_context.namespace_options.userns_options.mode = api_pb2.NODE
    build(tmp_path, config)


def test_image_config_section_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="^image config"):
        container_spec(replace(make_input(tmp_path), image_config={"config": ["not", "an", "object"]}))


def pause_input(base: Path, **overrides: Any) -> PauseSpecInput:
    rootfs = base / "rootfs"
    if not rootfs.exists():
        write_rootfs(rootfs)
    fields: dict[str, Any] = {
        "sandbox_id": "sbx-1",
        "sandbox": sandbox_config(),
        "image_config": {"config": {"User": "65535:65535", "Entrypoint": ["/pause"], "Env": ["PATH=/"]}},
        "rootfs": rootfs,
        "sandbox_paths": sandbox_paths(base),
        "cgroups_path": "/pycri/pod-sbx-1/pause",
        "runtime_oom_score_adj": -500,
        "seccomp_profile_root": None,
        "host": HOST,
    }
    fields.update(overrides)
    return PauseSpecInput(**fields)


def test_pause_spec(tmp_path: Path) -> None:
    sandbox = sandbox_config()
    sandbox.annotations["owner"] = "me"
    sandbox.annotations["run.oci.hooks"] = "forged"
    sandbox.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    spec = pause_spec(pause_input(tmp_path, sandbox=sandbox, allowed_annotations=("own*",)))
    process = spec["process"]
    assert process["args"] == ["/pause"]
    assert process["user"] == {"uid": 65535, "gid": 65535, "additionalGids": [65535]}
    assert process["env"] == ["PATH=/"]
    assert process["noNewPrivileges"] is True
    assert process["oomScoreAdj"] == -500
    assert process["capabilities"]["bounding"] == []
    assert spec["root"]["readonly"] is True
    assert spec["hostname"] == "web-0"
    assert spec["linux"]["namespaces"] == [
        {"type": "mount"},
        {"type": "pid"},
        {"type": "network", "path": str(tmp_path / "ns" / "net")},
        {"type": "ipc", "path": str(tmp_path / "ns" / "ipc")},
        {"type": "uts", "path": str(tmp_path / "ns" / "uts")},
    ]
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "unshare" not in spec["linux"]["seccomp"]["syscalls"][0]["names"]
    assert spec["annotations"] == {
        "owner": "me",
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "sbx-1",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "prod",
        "io.kubernetes.cri.sandbox-uid": "pod-uid",
        "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/prod_web_pod-uid",
    }
    assert {mount["destination"] for mount in spec["mounts"]} >= {"/proc", "/dev", "/sys"}
    json.dumps(spec)


def test_pause_spec_user_from_the_sandbox_and_oom_floor(tmp_path: Path) -> None:
    sandbox = sandbox_config()
    sandbox.linux.security_context.run_as_user.value = 1000
    spec = pause_spec(pause_input(tmp_path, sandbox=sandbox, runtime_oom_score_adj=-1000))
    assert spec["process"]["user"]["uid"] == 1000
    assert spec["process"]["oomScoreAdj"] == -998


def test_pause_spec_needs_an_entrypoint(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="pause image has no Entrypoint or Cmd"):
        pause_spec(pause_input(tmp_path, image_config={"config": {}}))
