"""Specs from pycri.oci.spec run by the real runc: users, capabilities, seccomp, masked paths, pause."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.oci.spec import (
    ContainerSpecInput,
    PauseSpecInput,
    SandboxPaths,
    container_spec,
    pause_spec,
)
from pycri.oci.spec_host import probe_host
from pycri.oci.spec_security import DEFAULT_CAPABILITIES, capability_names_from_mask

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "id", "grep", "cat", "touch", "unshare", "mkdir", "ls", "echo", "true", "sleep", "wc")
PASSWD = "root:x:0:0:root:/root:/bin/sh\npycri:x:1000:1000::/home/pycri:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\npycri:x:1000:\npycrisupp:x:1001:pycri\nnobody:x:65534:\n"
CGROUP_MOUNTS = Path("/sys/fs/cgroup")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Bench:
    """A busybox rootfs, a pod's files, a private runc root and a cgroup parent unique to one test."""

    base: Path
    rootfs: Path
    paths: SandboxPaths
    runc_root: Path
    cgroup_parent: str

    def run(self, spec: dict[str, Any], name: str) -> Run:
        bundle = self.base / f"bundle-{name}"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        done = subprocess.run(
            ["runc", "--root", str(self.runc_root), "run", "-b", str(bundle), f"{name}-{uuid.uuid4().hex[:8]}"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        return Run(done.returncode, done.stdout, done.stderr)


def _make_rootfs(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "proc", "sys", "dev", "tmp", "home/pycri"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)


def _remove_cgroup_parent(name: str) -> None:
    for hierarchy in CGROUP_MOUNTS.iterdir():
        leftover = hierarchy / name
        if leftover.is_dir():
            for child in sorted(leftover.glob("**/"), key=lambda path: len(path.parts), reverse=True):
                child.rmdir()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    rootfs = tmp_path / "rootfs"
    _make_rootfs(rootfs)
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "hostname").write_text("spec-test-pod\n")
    (pod / "hosts").write_text("127.0.0.1 localhost spec-test-pod\n")
    (pod / "resolv.conf").write_text("nameserver 127.0.0.53\nsearch spec.test\n")
    shm = pod / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,size=1m", "shm", str(shm)], check=True)
    cgroup_parent = f"pycri-spec-test-{uuid.uuid4().hex[:12]}"
    paths = SandboxPaths(
        netns=None,
        ipc=None,
        uts=None,
        pid=None,
        hostname=pod / "hostname",
        hosts=pod / "hosts",
        resolv_conf=pod / "resolv.conf",
        shm=shm,
    )
    runc_root = tmp_path / "runc"
    try:
        yield Bench(tmp_path, rootfs, paths, runc_root, cgroup_parent)
    finally:
        subprocess.run(["umount", str(shm)], check=True)
        _remove_cgroup_parent(cgroup_parent)


def _own_oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())


def _config(script: str, **security: Any) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="probe"),
        image=api_pb2.ImageSpec(image="busybox"),
        command=["/bin/sh", "-c", script],
    )
    context = config.linux.security_context
    context.namespace_options.pid = api_pb2.CONTAINER
    for key, value in security.items():
        if isinstance(value, api_pb2.SecurityProfile):
            getattr(context, key).CopyFrom(value)
        elif isinstance(value, list):
            getattr(context, key).extend(value)
        elif key in ("run_as_user", "run_as_group"):
            getattr(context, key).value = value
        else:
            setattr(context, key, value)
    return config


def _spec(
    bench: Bench, config: api_pb2.ContainerConfig, image_user: str = "", privileged_sandbox: bool = False
) -> dict[str, Any]:
    sandbox = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="pod", namespace="default", uid="uid-1"), hostname="spec-test-pod"
    )
    sandbox.linux.security_context.privileged = privileged_sandbox
    container_id = uuid.uuid4().hex
    return container_spec(
        ContainerSpecInput(
            container_id=container_id,
            sandbox_id="sandbox-1",
            config=config,
            sandbox=sandbox,
            image_config={"config": {"User": image_user, "Env": ["PATH=/bin"]}},
            rootfs=bench.rootfs,
            sandbox_paths=bench.paths,
            cgroups_path=f"/{bench.cgroup_parent}/{container_id}",
            runtime_oom_score_adj=_own_oom_score_adj(),
            seccomp_profile_root=bench.base,
        )
    )


def _status_field(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in {output!r}")


RUNTIME_DEFAULT = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
UNCONFINED = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)


def test_image_user_with_groups_from_etc_group_and_cri(bench: Bench) -> None:
    config = _config("id -u; id -g; id -G", supplemental_groups=[2000])
    result = bench.run(_spec(bench, config, image_user="pycri"), "user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["1000", "1000", "1000 1001 2000"]


def test_run_as_user_and_group_override_the_image_user(bench: Bench) -> None:
    config = _config("id -u; id -g; id -G", run_as_user=1000, run_as_group=3000, supplemental_groups_policy=1)
    result = bench.run(_spec(bench, config, image_user="nobody"), "runas")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["1000", "3000", "3000"]


def test_default_capabilities_for_root_and_only_bounding_for_others(bench: Bench) -> None:
    root = bench.run(_spec(bench, _config("grep Cap /proc/self/status")), "caps-root")
    assert root.returncode == 0, root.stderr
    default = sorted(DEFAULT_CAPABILITIES)
    assert sorted(capability_names_from_mask(int(_status_field(root.stdout, "CapEff"), 16))) == default
    assert sorted(capability_names_from_mask(int(_status_field(root.stdout, "CapBnd"), 16))) == default

    user = bench.run(_spec(bench, _config("grep Cap /proc/self/status"), image_user="pycri"), "caps-user")
    assert user.returncode == 0, user.stderr
    assert int(_status_field(user.stdout, "CapEff"), 16) == 0
    assert sorted(capability_names_from_mask(int(_status_field(user.stdout, "CapBnd"), 16))) == default


def test_capabilities_added_and_dropped(bench: Bench) -> None:
    config = _config("grep CapEff /proc/self/status")
    config.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    config.linux.security_context.capabilities.drop_capabilities.extend(["CAP_CHOWN", "mknod"])
    result = bench.run(_spec(bench, config), "caps-change")
    assert result.returncode == 0, result.stderr
    names = set(capability_names_from_mask(int(_status_field(result.stdout, "CapEff"), 16)))
    assert names == (DEFAULT_CAPABILITIES | {"CAP_NET_ADMIN"}) - {"CAP_CHOWN", "CAP_MKNOD"}


def test_readonly_rootfs_refuses_writes_but_pod_files_and_shm_work(bench: Bench) -> None:
    script = "touch /newfile; echo rc=$?; cat /etc/resolv.conf; touch /dev/shm/ok && echo shm-ok"
    result = bench.run(_spec(bench, _config(script, readonly_rootfs=True)), "readonly")
    assert result.returncode == 0, result.stderr
    assert "rc=1" in result.stdout
    assert "Read-only file system" in result.stderr
    assert "search spec.test" in result.stdout
    assert "shm-ok" in result.stdout
    assert (bench.paths.shm / "ok").exists()


def test_runtime_default_seccomp_is_loaded_and_blocks_user_namespaces(bench: Bench) -> None:
    script = "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?"
    confined = bench.run(_spec(bench, _config(script, seccomp=RUNTIME_DEFAULT)), "seccomp")
    assert confined.returncode == 0, confined.stderr
    assert _status_field(confined.stdout, "Seccomp") == "2"
    assert "unshare=1" in confined.stdout

    unconfined = bench.run(_spec(bench, _config(script, seccomp=UNCONFINED)), "unconfined")
    assert unconfined.returncode == 0, unconfined.stderr
    assert _status_field(unconfined.stdout, "Seccomp") == "0"
    assert "unshare=0" in unconfined.stdout


def test_localhost_seccomp_profile_in_docker_form(bench: Bench) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    (bench.base / "deny-mkdir.json").write_text(json.dumps(profile))
    localhost = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="deny-mkdir.json")
    result = bench.run(_spec(bench, _config("mkdir /tmp/x; echo rc=$?", seccomp=localhost)), "localhost")
    assert result.returncode == 0, result.stderr
    assert "rc=1" in result.stdout
    assert "Permission denied" in result.stderr


def test_masked_and_readonly_paths(bench: Bench) -> None:
    """/proc/timer_list and /sys/firmware exist on the host (checked) and must look empty; /proc/sys is read-only."""
    assert Path("/proc/timer_list").stat().st_size or Path("/proc/timer_list").read_text()
    assert any(Path("/sys/firmware").iterdir())
    script = "wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l; grep -c ' /proc/sys proc ro,' /proc/self/mounts"
    result = bench.run(_spec(bench, _config(script)), "masked")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["0", "0", "1"]


def test_oom_score_adj_never_below_the_runtime(bench: Bench) -> None:
    config = _config("cat /proc/self/oom_score_adj")
    config.linux.resources.oom_score_adj = -999
    result = bench.run(_spec(bench, config), "oom")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == _own_oom_score_adj()


def test_environment_hostname_and_working_dir(bench: Bench) -> None:
    config = _config("echo $HOSTNAME $GREETING; pwd", run_as_username="pycri")
    config.working_dir = "/home/pycri"
    config.envs.append(api_pb2.KeyValue(key="GREETING", value=b"hello"))
    result = bench.run(_spec(bench, config), "env")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["spec-test-pod hello", "/home/pycri"]


def test_privileged_container_gets_the_runtime_capabilities_and_writable_sys(bench: Bench) -> None:
    script = "grep CapEff /proc/self/status; grep Seccomp: /proc/self/status; grep ' /sys ' /proc/self/mounts"
    result = bench.run(_spec(bench, _config(script, privileged=True), privileged_sandbox=True), "privileged")
    assert result.returncode == 0, result.stderr
    effective = capability_names_from_mask(int(_status_field(result.stdout, "CapEff"), 16))
    assert sorted(effective) == sorted(probe_host().capabilities)
    assert _status_field(result.stdout, "Seccomp") == "0"
    assert " rw," in result.stdout.splitlines()[-1]


def test_pause_spec_runs_as_pid_one_without_capabilities(bench: Bench) -> None:
    sandbox = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(name="pod", namespace="ns", uid="u"))
    sandbox.linux.security_context.seccomp.CopyFrom(RUNTIME_DEFAULT)
    script = "echo pid=$$; grep -E 'CapEff|NoNewPrivs|Seccomp:' /proc/self/status; id -u; touch /x || echo ro"
    spec = pause_spec(
        PauseSpecInput(
            sandbox_id="sandbox-1",
            sandbox=sandbox,
            image_config={"config": {"User": "65534:65534", "Entrypoint": ["/bin/sh", "-c"], "Cmd": [script]}},
            rootfs=bench.rootfs,
            sandbox_paths=bench.paths,
            cgroups_path=f"/{bench.cgroup_parent}/pause",
            runtime_oom_score_adj=_own_oom_score_adj(),
            seccomp_profile_root=None,
        )
    )
    result = bench.run(spec, "pause")
    assert result.returncode == 0, result.stderr
    assert "pid=1" in result.stdout
    assert int(_status_field(result.stdout, "CapEff"), 16) == 0
    assert _status_field(result.stdout, "NoNewPrivs") == "1"
    assert _status_field(result.stdout, "Seccomp") == "2"
    assert "65534" in result.stdout.splitlines()
    assert "ro" in result.stdout.splitlines()


def test_memory_and_cpu_limits_reach_the_cgroup(bench: Bench) -> None:
    config = _config("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    config.linux.resources.memory_limit_in_bytes = 64 * 1024 * 1024
    config.linux.resources.cpu_quota = 50000
    config.linux.resources.cpu_period = 100000
    config.linux.resources.cpu_shares = 512
    host = probe_host()
    if host.cgroup_unified:
        config.command[-1] = "cat /sys/fs/cgroup/memory.max; cut -d' ' -f1 /sys/fs/cgroup/cpu.max"
    result = bench.run(_spec(bench, config), "limits")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 * 1024 * 1024), "50000"]


@pytest.fixture
def nested_mount(bench: Bench) -> Iterator[Path]:
    """A host directory with a tmpfs mounted inside it, to tell recursive read-only from plain read-only."""
    data = bench.base / "data"
    (data / "inner").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "inner", str(data / "inner")], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", str(data / "inner")], check=True)


@pytest.mark.parametrize(("recursive", "inner_writable"), [(False, True), (True, False)])
def test_readonly_bind_mounts_plain_and_recursive(
    bench: Bench, nested_mount: Path, recursive: bool, inner_writable: bool
) -> None:
    config = _config("touch /data/top; echo top=$?; touch /data/inner/file; echo inner=$?")
    config.mounts.append(
        api_pb2.Mount(container_path="/data", host_path=str(nested_mount), readonly=True, recursive_read_only=recursive)
    )
    result = bench.run(_spec(bench, config), "rro" if recursive else "ro")
    assert result.returncode == 0, result.stderr
    assert "top=1" in result.stdout
    assert f"inner={0 if inner_writable else 1}" in result.stdout
    assert (nested_mount / "inner" / "file").exists() is inner_writable


@pytest.fixture
def shared_mount(bench: Bench) -> Iterator[Path]:
    shared = bench.base / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "shared", str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    (shared / "inner").mkdir()
    try:
        yield shared
    finally:
        if os.path.ismount(shared / "inner"):
            subprocess.run(["umount", str(shared / "inner")], check=True)
        subprocess.run(["umount", str(shared)], check=True)


def test_host_to_container_propagation_shows_later_host_mounts(bench: Bench, shared_mount: Path) -> None:
    # The loop bounds the wait so that a broken propagation ends the container instead of hanging the test.
    wait_for_flag = "i=0; while [ ! -e /data/inner/flag ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    script = f"echo ready; {wait_for_flag}; ls /data/inner"
    config = _config(script)
    config.mounts.append(
        api_pb2.Mount(
            container_path="/data", host_path=str(shared_mount), propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER
        )
    )
    spec = _spec(bench, config)
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    bundle = bench.base / "bundle-propagation"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    container_id = f"propagation-{uuid.uuid4().hex[:8]}"
    runc = subprocess.Popen(
        ["runc", "--root", str(bench.runc_root), "run", "-b", str(bundle), container_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert runc.stdout is not None
        assert runc.stdout.readline() == "ready\n"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(shared_mount / "inner")], check=True)
        (shared_mount / "inner" / "flag").write_text("")
        stdout, stderr = runc.communicate(timeout=120)
    finally:
        if runc.poll() is None:
            subprocess.run(["runc", "--root", str(bench.runc_root), "delete", "--force", container_id], check=False)
            runc.kill()
            runc.wait()
    assert runc.returncode == 0, stderr
    assert stdout.split() == ["flag"]


@pytest.fixture
def pinned_namespaces(bench: Bench) -> Iterator[dict[str, Path]]:
    """Network, IPC and UTS namespaces pinned on files by util-linux unshare, as the sandbox service pins them."""
    directory = bench.base / "ns"
    directory.mkdir()
    pinned = {kind: directory / kind for kind in ("net", "ipc", "uts")}
    for path in pinned.values():
        path.touch()
    subprocess.run(["unshare", *(f"--{kind}={path}" for kind, path in pinned.items()), "true"], check=True)
    try:
        yield pinned
    finally:
        for path in pinned.values():
            subprocess.run(["umount", str(path)], check=True)


def test_containers_join_pinned_namespaces_and_get_the_pod_hostname(
    bench: Bench, pinned_namespaces: dict[str, Path]
) -> None:
    bench.paths = replace(
        bench.paths, netns=pinned_namespaces["net"], ipc=pinned_namespaces["ipc"], uts=pinned_namespaces["uts"]
    )
    script = "cat /proc/sys/kernel/hostname; ls /sys/class/net; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc"
    spec = _spec(bench, _config(script))
    assert spec["hostname"] == "spec-test-pod"
    result = bench.run(spec, "joined")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "spec-test-pod"
    assert lines[1] == "lo"  # a fresh network namespace has only loopback
    inodes = [os.stat(pinned_namespaces[kind]).st_ino for kind in ("net", "ipc")]
    assert lines[2:4] == [f"net:[{inodes[0]}]", f"ipc:[{inodes[1]}]"]
