"""What confines a container, seen from inside it and from the host: read-only rootfs,
capabilities, privileged, no_new_privs, seccomp, masked paths, bind mounts and cgroup limits."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.cgroups import host_layout
from pycri.oci.spec_security import capability_names_from_mask
from tests.integration.test_sandbox_support import rpc_error
from tests.support.pods import (
    SLEEP_FOREVER,
    Workloads,
    cgroup_dir,
    container_config,
)

pytestmark = pytest.mark.integration

# What Docker and containerd grant an unprivileged container.
DEFAULT_CAPABILITIES = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
        "CAP_AUDIT_WRITE",
    }
)  # fmt: skip
MiB = 1024 * 1024


def sleeper(name: str, image: str, **fields: object) -> api_pb2.ContainerConfig:
    return container_config(name, image, *SLEEP_FOREVER, **fields)


def proc_status(work: Workloads, container_id: str) -> dict[str, str]:
    """/proc/self/status of a process exec'd in the container (it has the container's process settings)."""
    text = work.output(container_id, "cat", "/proc/self/status")
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def effective_capabilities(work: Workloads, container_id: str) -> set[str]:
    return set(capability_names_from_mask(int(proc_status(work, container_id)["CapEff"], 16)))


# ---- the process ----


def test_a_readonly_rootfs_refuses_writes(work: Workloads, busybox: str) -> None:
    pod = work.pod("readonly")
    config = sleeper("readonly", busybox)
    config.linux.security_context.readonly_rootfs = True
    container_id = work.run(pod, config)
    for path in ("/new-file", "/tmp/new-file"):
        reply = work.exec(container_id, "touch", path)
        assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr
    work.output(container_id, "touch", "/dev/shm/fine")


def test_capabilities_are_the_defaults_with_add_and_drop_applied(work: Workloads, busybox: str) -> None:
    pod = work.pod("capabilities")
    default = work.run(pod, sleeper("default", busybox))
    assert effective_capabilities(work, default) == DEFAULT_CAPABILITIES

    changed = sleeper("changed", busybox)
    changed.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    changed.linux.security_context.capabilities.drop_capabilities.append("CAP_CHOWN")
    changed_id = work.run(pod, changed)
    assert effective_capabilities(work, changed_id) == DEFAULT_CAPABILITIES - {"CAP_CHOWN"} | {"CAP_NET_ADMIN"}
    assert work.exec(changed_id, "chown", "1:1", "/tmp").exit_code != 0

    minimal = sleeper("minimal", busybox)
    minimal.linux.security_context.capabilities.drop_capabilities.append("ALL")
    minimal.linux.security_context.capabilities.add_capabilities.append("NET_BIND_SERVICE")
    assert effective_capabilities(work, work.run(pod, minimal)) == {"CAP_NET_BIND_SERVICE"}


def test_a_privileged_container_needs_a_privileged_pod(work: Workloads, busybox: str) -> None:
    config = sleeper("privileged", busybox)
    config.linux.security_context.privileged = True
    error = rpc_error(work.create, work.pod("unprivileged"), config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "privileged" in error.details()

    privileged_pod = api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(privileged=True)
    )
    container_id = work.run(work.pod("privileged", linux=privileged_pod), config)
    own_capabilities = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16)
    assert effective_capabilities(work, container_id) == set(capability_names_from_mask(own_capabilities))
    assert proc_status(work, container_id)["Seccomp"] == "0"
    mountinfo = work.output(container_id, "cat", "/proc/self/mountinfo")
    assert " /proc/timer_list " not in mountinfo and " /proc/kcore " not in mountinfo


def test_no_new_privs_is_set_only_when_asked(work: Workloads, busybox: str) -> None:
    pod = work.pod("no-new-privs")
    config = sleeper("restricted", busybox)
    config.linux.security_context.no_new_privs = True
    assert proc_status(work, work.run(pod, config))["NoNewPrivs"] == "1"
    assert proc_status(work, work.run(pod, sleeper("free", busybox)))["NoNewPrivs"] == "0"


def test_seccomp_runtime_default_filters_and_unconfined_does_not(work: Workloads, busybox: str) -> None:
    pod = work.pod("seccomp")
    profile = api_pb2.SecurityProfile
    filtered = sleeper("filtered", busybox)
    filtered.linux.security_context.seccomp.profile_type = profile.RuntimeDefault
    unconfined = sleeper("unconfined", busybox)
    unconfined.linux.security_context.seccomp.profile_type = profile.Unconfined
    assert proc_status(work, work.run(pod, filtered))["Seccomp"] == "2"
    assert proc_status(work, work.run(pod, unconfined))["Seccomp"] == "0"


def test_proc_paths_are_masked_and_read_only(work: Workloads, busybox: str) -> None:
    pod = work.pod("masked")
    container_id = work.run(pod, sleeper("masked", busybox))
    mountinfo = work.output(container_id, "cat", "/proc/self/mountinfo")
    masked = [path for path in ("/proc/kcore", "/proc/timer_list") if Path(path).exists()]
    assert masked, "this host has none of the masked files the test reads"
    for path in masked:
        assert f" {path} " in mountinfo
        assert work.output(container_id, "wc", "-c", path).split()[0] == "0"
    reply = work.exec(container_id, "sh", "-c", "echo 1 > /proc/sys/kernel/domainname")
    assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr


# ---- mounts ----


def test_a_bind_mount_shares_a_host_directory(work: Workloads, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "from-host").write_text("host\n")
    pod = work.pod("bind")
    mount = api_pb2.Mount(container_path="/data", host_path=str(tmp_path))
    container_id = work.run(pod, sleeper("bind", busybox, mounts=[mount]))
    assert work.output(container_id, "cat", "/data/from-host") == "host\n"
    work.output(container_id, "sh", "-c", "echo container > /data/from-container")
    assert (tmp_path / "from-container").read_text() == "container\n"


def test_a_readonly_bind_mount_refuses_writes(work: Workloads, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "from-host").write_text("host\n")
    pod = work.pod("bind-readonly")
    mount = api_pb2.Mount(container_path="/data", host_path=str(tmp_path), readonly=True)
    container_id = work.run(pod, sleeper("bind", busybox, mounts=[mount]))
    assert work.output(container_id, "cat", "/data/from-host") == "host\n"
    reply = work.exec(container_id, "touch", "/data/from-container")
    assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr
    assert not (tmp_path / "from-container").exists()


def test_a_missing_host_path_is_created_as_a_directory(work: Workloads, busybox: str, tmp_path: Path) -> None:
    missing = tmp_path / "not" / "there"
    pod = work.pod("bind-missing")
    mount = api_pb2.Mount(container_path="/data", host_path=str(missing))
    container_id = work.run(pod, sleeper("bind", busybox, mounts=[mount]))
    assert missing.is_dir()
    work.output(container_id, "touch", "/data/made")
    assert (missing / "made").exists()


# ---- resources ----


def limits(cgroups_path: str) -> dict[str, str]:
    """Memory limit, CPU weight/shares and CPU quota as the host's cgroup files hold them."""
    if host_layout().unified is not None:
        directory = cgroup_dir(cgroups_path, "memory")
        return {
            "memory": (directory / "memory.max").read_text().strip(),
            "cpu": (directory / "cpu.weight").read_text().strip(),
            "quota": (directory / "cpu.max").read_text().strip(),
        }
    memory, cpu = cgroup_dir(cgroups_path, "memory"), cgroup_dir(cgroups_path, "cpu")
    return {
        "memory": (memory / "memory.limit_in_bytes").read_text().strip(),
        "cpu": (cpu / "cpu.shares").read_text().strip(),
        "quota": f"{(cpu / 'cpu.cfs_quota_us').read_text().strip()} {(cpu / 'cpu.cfs_period_us').read_text().strip()}",
    }


def expected_limits(memory: int, shares: int, quota: int, period: int) -> dict[str, str]:
    if host_layout().unified is not None:
        weight = 1 + ((shares - 2) * 9999) // 262142  # the conversion runc applies
        return {"memory": str(memory), "cpu": str(weight), "quota": f"{quota} {period}"}
    return {"memory": str(memory), "cpu": str(shares), "quota": f"{quota} {period}"}


def test_memory_and_cpu_limits_reach_the_container_cgroup(work: Workloads, busybox: str) -> None:
    pod = work.pod("limited")
    resources = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=64 * MiB, cpu_shares=512, cpu_quota=50_000, cpu_period=100_000
    )
    container_id = work.run(pod, sleeper("limited", busybox, linux=api_pb2.LinuxContainerConfig(resources=resources)))
    assert limits(work.info(container_id)["cgroupsPath"]) == expected_limits(64 * MiB, 512, 50_000, 100_000)
    assert work.status(container_id).resources.linux.memory_limit_in_bytes == 64 * MiB


def test_update_container_resources_changes_the_memory_limit(work: Workloads, busybox: str) -> None:
    pod = work.pod("updated")
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)
    container_id = work.run(pod, sleeper("updated", busybox, linux=api_pb2.LinuxContainerConfig(resources=resources)))
    cgroups_path = work.info(container_id)["cgroupsPath"]

    wanted = api_pb2.LinuxContainerResources(memory_limit_in_bytes=128 * MiB, cpu_shares=256)
    work.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(container_id=container_id, linux=wanted)
    )
    assert limits(cgroups_path)["memory"] == str(128 * MiB)
    assert work.status(container_id).resources.linux.memory_limit_in_bytes == 128 * MiB


def test_a_container_over_its_memory_limit_is_oom_killed(work: Workloads, busybox: str) -> None:
    pod = work.pod("oom")
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=16 * MiB, memory_swap_limit_in_bytes=16 * MiB)
    command = ("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
    config = container_config("hungry", busybox, *command, linux=api_pb2.LinuxContainerConfig(resources=resources))
    status = work.wait_for_exit(work.run(pod, config))
    assert (status.exit_code, status.reason) == (137, "OOMKilled")
