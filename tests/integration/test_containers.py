"""The container lifecycle through gRPC against a real pycri, runc, conmon and CNI: create, start,
status, list, stop, remove; the process a config makes; logs; ExecSync; errors and what a
failed create leaves; pods stopping and removing their containers; pycri restarts."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node, rpc_error
from tests.support.busybox_images import TestImages
from tests.support.pods import (
    CREATED,
    EXITED,
    RUNNING,
    SLEEP_FOREVER,
    Pod,
    Workloads,
    cgroup_dir,
    conmons_of,
    container_config,
    pod_cgroup,
    shell,
    wait_until,
)

pytestmark = pytest.mark.integration

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$")
# Runs until /tmp/done exists, then exits with the code in it.
EXIT_ON_REQUEST = shell("while [ ! -e /tmp/done ]; do sleep 0.05; done; exit $(cat /tmp/done)")


@pytest.fixture
def user_image(test_images: TestImages) -> str:
    return test_images.user.reference


def log_lines(path: Path) -> list[tuple[str, str]]:
    """(stream, text) of each complete line of a CRI log file; every line must have the CRI format."""
    lines = []
    for line in path.read_text().split("\n")[:-1]:
        match = CRI_LOG_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        lines.append((match.group(2), match.group(4)))
    return lines


def logged(path: Path, text: str) -> bool:
    return path.exists() and any(line == text for _, line in log_lines(path))


def run_to_the_end(work: Workloads, pod: Pod, config: api_pb2.ContainerConfig) -> api_pb2.ContainerStatus:
    status = work.wait_for_exit(work.run(pod, config))
    assert status.exit_code == 0, log_lines(Path(status.log_path))
    return status


def printed(status: api_pb2.ContainerStatus) -> list[str]:
    return [text for _, text in log_lines(Path(status.log_path))]


def output_of(work: Workloads, pod: Pod, config: api_pb2.ContainerConfig) -> list[str]:
    """Run a container to its end; the lines it printed."""
    return printed(run_to_the_end(work, pod, config))


# ---- lifecycle ----


def test_container_goes_created_running_exited_with_times_image_and_metadata(
    work: Workloads, busybox: str, test_images: TestImages, tmp_path: Path
) -> None:
    pod = work.pod("lifecycle")
    mount = api_pb2.Mount(container_path="/data", host_path=str(tmp_path), readonly=True)
    config = container_config(
        "app",
        busybox,
        *EXIT_ON_REQUEST,
        metadata=api_pb2.ContainerMetadata(name="app", attempt=2),
        labels={"tier": "web"},
        annotations={"note": "kept"},
        log_path="app/0.log",
        mounts=[mount],
    )
    before = time.time_ns()
    container_id = work.create(pod, config)

    created = work.status(container_id)
    assert len(container_id) == 64 and created.id == container_id
    assert created.state == CREATED and before <= created.created_at and created.started_at == 0
    assert created.metadata == config.metadata
    assert (dict(created.labels), dict(created.annotations)) == ({"tier": "web"}, {"note": "kept"})
    assert created.image.image == busybox
    assert created.image_ref == created.image_id == test_images.busybox.image_id
    assert created.log_path == str(pod.log_directory / "app/0.log")
    assert list(created.mounts) == [mount]

    work.start(container_id)
    running = work.status(container_id)
    assert running.state == RUNNING and created.created_at <= running.started_at and running.finished_at == 0

    work.output(container_id, "sh", "-c", "echo 0 > /tmp/done")
    exited = work.wait_for_exit(container_id)
    assert (exited.exit_code, exited.reason) == (0, "Completed")
    assert running.started_at <= exited.finished_at <= time.time_ns()
    assert exited.started_at == running.started_at and exited.created_at == created.created_at


def test_exit_code_3_is_an_error(work: Workloads, busybox: str) -> None:
    pod = work.pod("failing")
    container_id = work.run(pod, container_config("fails", busybox, *shell("exit 3")))
    status = work.wait_for_exit(container_id)
    assert (status.exit_code, status.reason) == (3, "Error")


def test_a_container_that_exits_at_once_never_finishes_before_it_started(work: Workloads, busybox: str) -> None:
    pod = work.pod("quick")
    for attempt in range(20):
        status = work.wait_for_exit(work.run(pod, container_config(f"quick-{attempt}", busybox, "true")))
        assert status.created_at <= status.started_at <= status.finished_at, status


def test_list_filters_by_id_prefix_state_pod_and_labels(work: Workloads, busybox: str) -> None:
    shop, blog = work.pod("shop"), work.pod("blog")
    web = work.run(shop, container_config("web", busybox, *SLEEP_FOREVER, labels={"tier": "front", "app": "shop"}))
    worker = work.create(shop, container_config("worker", busybox, *SLEEP_FOREVER, labels={"tier": "back"}))
    done = work.run(blog, container_config("done", busybox, "true", labels={"tier": "front", "app": "blog"}))
    work.wait_for_exit(done)

    def ids(**filter_fields: object) -> set[str]:
        return {container.id for container in work.list(**filter_fields)}

    assert ids(pod_sandbox_id=shop.id) == {web, worker}
    assert ids(pod_sandbox_id=blog.id[:12]) == {done}
    assert ids(id=web[:12]) == {web}
    assert ids(id="f" * 64) == set()
    assert ids(state=api_pb2.ContainerStateValue(state=RUNNING)) >= {web}
    assert {web, worker, done} & ids(state=api_pb2.ContainerStateValue(state=CREATED)) == {worker}
    assert {web, worker, done} & ids(state=api_pb2.ContainerStateValue(state=EXITED)) == {done}
    assert ids(label_selector={"tier": "front"}) >= {web, done}
    assert ids(label_selector={"tier": "front", "app": "shop"}) == {web}
    assert ids(pod_sandbox_id=shop.id, state=api_pb2.ContainerStateValue(state=CREATED)) == {worker}

    (listed,) = work.list(id=web)
    assert (listed.pod_sandbox_id, listed.metadata.name, listed.state) == (shop.id, "web", RUNNING)
    assert listed.image.image == busybox and listed.image_ref and dict(listed.labels)["app"] == "shop"
    streamed = work.runtime.StreamContainers(
        api_pb2.StreamContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=shop.id))
    )
    assert {container.id for reply in streamed for container in reply.containers} == {web, worker}


# ---- the process a config makes ----


def test_image_entrypoint_and_cmd_run_as_the_image_user_in_its_working_dir(work: Workloads, user_image: str) -> None:
    pod = work.pod("image-defaults")
    status = run_to_the_end(work, pod, container_config("defaults", user_image))
    assert printed(status) == ["uid=1000(pycri) gid=1000(pycri) groups=1000(pycri),1001(pycrisupp)", "/home/pycri"]
    user = status.user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1000, 1000, [1000, 1001])


def test_args_replace_the_image_cmd_and_keep_its_entrypoint(work: Workloads, user_image: str) -> None:
    pod = work.pod("args")
    assert output_of(work, pod, container_config("args", user_image, args=["echo replaced"])) == ["replaced"]


def test_command_replaces_the_entrypoint_and_drops_the_image_cmd(work: Workloads, user_image: str) -> None:
    pod = work.pod("command")
    assert output_of(work, pod, container_config("command", user_image, "echo", "direct")) == ["direct"]
    config = container_config("both", user_image, "echo", "command", args=["and", "args"])
    assert output_of(work, pod, config) == ["command and args"]


def test_env_merges_the_image_env_with_the_config_env_winning(work: Workloads, user_image: str) -> None:
    pod = work.pod("env")
    envs = [api_pb2.KeyValue(key="PYCRI_IMAGE", value=b"override"), api_pb2.KeyValue(key="EXTRA", value=b"a b")]
    env = output_of(work, pod, container_config("env", user_image, "env", envs=envs))
    assert {"PYCRI_IMAGE=override", "EXTRA=a b", "HOSTNAME=env"} <= set(env)
    assert any(line.startswith("PATH=") for line in env) and "PYCRI_IMAGE=user" not in env


def test_working_dir_from_the_config_replaces_the_image_one(work: Workloads, user_image: str, busybox: str) -> None:
    pod = work.pod("workdir")
    assert output_of(work, pod, container_config("config", user_image, "pwd", working_dir="/tmp")) == ["/tmp"]
    assert output_of(work, pod, container_config("root", busybox, "pwd")) == ["/"]


def test_security_context_user_group_and_supplemental_groups(work: Workloads, busybox: str) -> None:
    pod = work.pod("ids")
    config = container_config("numeric", busybox, "id")
    context = config.linux.security_context
    context.run_as_user.value, context.run_as_group.value = 1234, 5678
    context.supplemental_groups.extend([4242])
    status = run_to_the_end(work, pod, config)
    assert printed(status) == ["uid=1234 gid=5678 groups=4242,5678"]
    user = status.user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1234, 5678, [4242, 5678])


def test_run_as_username_resolves_in_the_image(work: Workloads, busybox: str) -> None:
    pod = work.pod("username")
    config = container_config("named", busybox, "id")
    config.linux.security_context.run_as_username = "pycri"
    assert output_of(work, pod, config) == ["uid=1000(pycri) gid=1000(pycri) groups=1000(pycri),1001(pycrisupp)"]


def test_containers_of_a_shared_pid_pod_see_each_other_and_the_pause_process(work: Workloads, busybox: str) -> None:
    config = work.pod_config("shared-pid")
    config.linux.security_context.namespace_options.pid = api_pb2.NamespaceMode.POD
    pod = work.run_pod(config)
    shared = [container_config(name, busybox, *SLEEP_FOREVER) for name in ("first", "second")]
    for container in shared:
        container.linux.security_context.namespace_options.pid = api_pb2.NamespaceMode.POD
    work.run(pod, shared[0])
    second = work.run(pod, shared[1])
    processes = work.output(second, "ps", "-o", "pid,args").splitlines()
    assert any(line.split(None, 1) == ["1", "/bin/sleep infinity"] for line in processes), processes
    assert sum(" ".join(SLEEP_FOREVER) in line for line in processes) == 2, processes


# ---- logs ----


def test_the_log_file_has_a_cri_line_per_stdout_and_stderr_line(work: Workloads, busybox: str) -> None:
    pod = work.pod("logs")
    config = container_config("talker", busybox, *shell("echo hello; echo oops >&2"), log_path="talker.log")
    status = work.wait_for_exit(work.run(pod, config))
    assert status.log_path == str(pod.log_directory / "talker.log")
    assert sorted(log_lines(Path(status.log_path))) == [("stderr", "oops"), ("stdout", "hello")]


def test_reopen_container_log_makes_conmon_write_a_new_file(work: Workloads, busybox: str) -> None:
    pod = work.pod("rotated")
    script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"
    container_id = work.run(pod, container_config("ticker", busybox, *shell(script), log_path="ticker.log"))
    log_path = pod.log_directory / "ticker.log"
    wait_until(lambda: logged(log_path, "tick 1"), "the first ticks in the log")

    rotated = log_path.rename(log_path.with_name("ticker.log.1"))
    work.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=container_id))
    wait_until(lambda: log_path.exists() and log_lines(log_path), "lines in the reopened log")
    first_new = int(log_lines(log_path)[0][1].split()[1])
    last_old = int(log_lines(rotated)[-1][1].split()[1])
    assert first_new > last_old
    work.stop(container_id)


# ---- ExecSync ----


def test_exec_sync_returns_output_and_exit_code(work: Workloads, busybox: str) -> None:
    pod = work.pod("exec")
    container_id = work.run(pod, container_config("target", busybox, *SLEEP_FOREVER))
    reply = work.exec(container_id, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 5)
    assert work.output(container_id, "hostname") == "exec\n"


def test_exec_sync_timeout_kills_the_command(work: Workloads, busybox: str) -> None:
    pod = work.pod("exec-timeout")
    container_id = work.run(pod, container_config("target", busybox, *SLEEP_FOREVER))
    error = rpc_error(lambda: work.exec(container_id, "sleep", "100", timeout=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "sleep 100" not in work.output(container_id, "ps", "-o", "args")


# ---- stop and remove ----


def test_stop_sends_the_image_stop_signal(work: Workloads, user_image: str) -> None:
    pod = work.pod("stop-signal")
    script = "trap 'exit 7' INT; echo ready; while true; do sleep 0.05; done"
    container_id = work.run(pod, container_config("interruptible", user_image, args=[script], log_path="i.log"))
    assert work.status(container_id).stop_signal == api_pb2.Signal.SIGNAL_SIGINT
    wait_until(lambda: logged(pod.log_directory / "i.log", "ready"), "the trap to be set")
    work.stop(container_id, timeout=30)
    status = work.status(container_id)
    assert (status.state, status.exit_code, status.reason) == (EXITED, 7, "Error")


def test_stop_kills_a_container_that_ignores_the_signal_after_the_timeout(work: Workloads, busybox: str) -> None:
    pod = work.pod("stubborn")
    script = "trap '' TERM; echo ready; while true; do sleep 0.05; done"
    container_id = work.run(pod, container_config("stubborn", busybox, *shell(script), log_path="s.log"))
    wait_until(lambda: logged(pod.log_directory / "s.log", "ready"), "the trap to be set")
    work.stop(container_id, timeout=1)
    status = work.status(container_id)
    assert (status.state, status.exit_code, status.reason) == (EXITED, 137, "Error")


def test_stop_and_remove_are_idempotent(work: Workloads, busybox: str) -> None:
    pod = work.pod("twice")
    container_id = work.run(pod, container_config("twice", busybox, *SLEEP_FOREVER))
    work.stop(container_id)
    work.stop(container_id)
    assert work.status(container_id).state == EXITED
    work.remove(container_id)
    work.remove(container_id)
    assert rpc_error(work.status, container_id).code() == grpc.StatusCode.NOT_FOUND
    assert work.list(pod_sandbox_id=pod.id) == []


def test_unknown_container_ids(work: Workloads) -> None:
    unknown = "0" * 64
    error = rpc_error(work.status, unknown)
    assert error.code() == grpc.StatusCode.NOT_FOUND and unknown in error.details()
    work.stop(unknown)
    work.remove(unknown)


def test_remove_of_a_running_container_kills_it_and_leaves_nothing(work: Workloads, busybox: str) -> None:
    pod = work.pod("removed")
    container_id = work.run(pod, container_config("removed", busybox, *SLEEP_FOREVER))
    work.remove(container_id)
    assert container_id not in work.runc_ids() and conmons_of(pod) == []
    assert not any(container_id in str(path) for path in work.container_dirs() + work.container_mounts())


# ---- errors, and what a failed create leaves ----


def test_a_duplicate_name_in_a_pod_is_already_exists_naming_the_holder(work: Workloads, busybox: str) -> None:
    pod = work.pod("duplicate")
    holder = work.create(pod, container_config("same", busybox, *SLEEP_FOREVER))
    error = rpc_error(work.create, pod, container_config("same", busybox, *SLEEP_FOREVER))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and holder in error.details()

    other_pod = work.pod("duplicate")
    work.create(other_pod, container_config("same", busybox, *SLEEP_FOREVER))
    work.remove(holder)
    work.create(pod, container_config("same", busybox, *SLEEP_FOREVER))


def leaves_nothing_behind(work: Workloads, pod: Pod) -> None:
    assert work.list(pod_sandbox_id=pod.id) == []
    assert work.container_dirs() == [] and work.container_mounts() == []
    assert work.runc_ids() == [] and conmons_of(pod) == []


def add_capability(config: api_pb2.ContainerConfig, name: str) -> None:
    config.linux.security_context.capabilities.add_capabilities.append(name)


# The field the error must name, and how to spoil a good config.
INVALID_CONFIGS: dict[str, Callable[[api_pb2.ContainerConfig], object]] = {
    "config.metadata.name": lambda config: config.metadata.ClearField("name"),
    "config.image.image": lambda config: config.image.ClearField("image"),
    "add_capabilities: unknown capability NO_SUCH": lambda config: add_capability(config, "NO_SUCH"),
    "working_dir": lambda config: setattr(config, "working_dir", "relative/dir"),
    "envs[0].key": lambda config: config.envs.append(api_pb2.KeyValue(key="A=B", value=b"x")),
    "log_path": lambda config: setattr(config, "log_path", "/var/log/absolute.log"),
    "run_as_group": lambda config: config.linux.security_context.run_as_group.SetInParent(),
}


@pytest.mark.parametrize("field", INVALID_CONFIGS)
def test_an_invalid_config_is_invalid_argument_naming_the_field(work: Workloads, busybox: str, field: str) -> None:
    pod = work.pod("invalid")
    config = container_config("invalid", busybox, *SLEEP_FOREVER)
    INVALID_CONFIGS[field](config)
    error = rpc_error(work.create, pod, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details()
    leaves_nothing_behind(work, pod)


def test_an_image_not_pulled_and_an_unknown_pod_are_not_found(work: Workloads, busybox: str) -> None:
    pod = work.pod("missing")
    error = rpc_error(work.create, pod, container_config("app", "127.0.0.1:1/never/pulled:1", "true"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "never/pulled" in error.details()
    unknown = Pod("0" * 64, pod.config)
    error = rpc_error(work.create, unknown, container_config("app", busybox, "true"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and unknown.id in error.details()


def test_a_stopped_pod_takes_no_new_container(work: Workloads, busybox: str) -> None:
    pod = work.pod("stopped")
    work.stop_pod(pod.id)
    error = rpc_error(work.create, pod, container_config("late", busybox, "true"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and pod.id in error.details()


@pytest.mark.parametrize("failure", ["runc create", "seccomp profile"])
def test_a_create_failing_half_way_leaves_nothing_behind(
    work: Workloads, busybox: str, tmp_path: Path, failure: str
) -> None:
    pod = work.pod("half-way")
    made_for_the_mount = tmp_path / "made" / "by-pycri"
    config = container_config(
        "doomed",
        busybox,
        "/no/such/program",
        log_path="doomed.log",
        mounts=[api_pb2.Mount(container_path="/made", host_path=str(made_for_the_mount))],
    )
    if failure == "seccomp profile":
        config.command[:] = SLEEP_FOREVER
        seccomp = config.linux.security_context.seccomp
        seccomp.profile_type = api_pb2.SecurityProfile.Localhost
        seccomp.localhost_ref = str(tmp_path / "no-such-profile.json")
    error = rpc_error(work.create, pod, config)
    if failure == "runc create":
        assert "/no/such/program" in error.details()
    else:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no-such-profile.json" in error.details()
    leaves_nothing_behind(work, pod)
    assert not (tmp_path / "made").exists() and not (pod.log_directory / "doomed.log").exists()
    work.create(pod, container_config("doomed", busybox, *SLEEP_FOREVER))  # the name was released


# ---- pods, images and restarts ----


def test_stop_pod_sandbox_stops_its_containers(work: Workloads, busybox: str) -> None:
    pod = work.pod("stopping")
    running = work.run(pod, container_config("running", busybox, *SLEEP_FOREVER))
    created = work.create(pod, container_config("created", busybox, *SLEEP_FOREVER))
    work.stop_pod(pod.id)
    assert work.status(running).state == EXITED and work.status(running).exit_code == 137
    assert work.status(created).state == EXITED
    assert conmons_of(pod) == []


def test_remove_pod_sandbox_removes_its_containers(work: Workloads, busybox: str) -> None:
    pod = work.pod("removing")
    containers = [work.run(pod, container_config(f"c{n}", busybox, *SLEEP_FOREVER)) for n in range(2)]
    work.remove_pod(pod.id)
    for container_id in containers:
        assert rpc_error(work.status, container_id).code() == grpc.StatusCode.NOT_FOUND
    leaves_nothing_behind(work, pod)


def test_remove_pod_sandbox_removes_the_pod_cgroup_pycri_made(work: Workloads, busybox: str) -> None:
    pod = work.pod("cgroup")
    work.run(pod, container_config("inside", busybox, *SLEEP_FOREVER))
    assert cgroup_dir(pod_cgroup(pod.id), "memory").is_dir()
    work.remove_pod(pod.id)
    assert not cgroup_dir(pod_cgroup(pod.id), "memory").exists()


def test_a_running_container_outlives_the_removal_of_its_image(work: Workloads, test_images: TestImages) -> None:
    image = test_images.plain
    work.pull(image.reference)
    pod = work.pod("image-gone")
    container_id = work.run(pod, container_config("orphan", image.reference, *SLEEP_FOREVER))
    snapshots = work.root_dir / "snapshots"
    layers = set(snapshots.iterdir())

    work.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image.image_id)))
    status_request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image.reference))
    assert not work.images.ImageStatus(status_request).image.id
    assert work.output(container_id, "cat", "/etc/pycri-image") == "plain\n"
    assert work.status(container_id).image_ref == image.image_id
    assert set(snapshots.iterdir()) == layers
    work.remove(container_id)
    assert rpc_error(work.status, container_id).code() == grpc.StatusCode.NOT_FOUND


def restart(node: Node, work: Workloads) -> None:
    node.daemon.stop()
    node.daemon.start()
    work.reconnect()


def test_containers_keep_running_across_a_pycri_restart(node: Node, work: Workloads, busybox: str) -> None:
    pod = work.pod("survivor")
    container_id = work.run(pod, container_config("survivor", busybox, *SLEEP_FOREVER))
    pid = work.info(container_id)["pid"]
    restart(node, work)
    status = work.status(container_id)
    assert (status.state, work.info(container_id)["pid"]) == (RUNNING, pid)
    assert work.output(container_id, "echo", "still here") == "still here\n"
    work.stop(container_id)
    assert work.status(container_id).exit_code == 137


def test_a_container_that_exits_while_pycri_is_down_is_reported_exited(
    node: Node, work: Workloads, busybox: str, tmp_path: Path
) -> None:
    pod = work.pod("exits-meanwhile")
    script = "while [ ! -e /signal/go ]; do sleep 0.05; done; exit 3"
    mount = api_pb2.Mount(container_path="/signal", host_path=str(tmp_path))
    container_id = work.run(pod, container_config("waiter", busybox, *shell(script), mounts=[mount]))
    process = psutil.Process(work.info(container_id)["pid"])

    node.daemon.stop()
    (tmp_path / "go").touch()
    process.wait(timeout=30)
    wait_until(lambda: conmons_of(pod) == [], "conmon to record the exit")
    node.daemon.start()
    work.reconnect()
    status = work.status(container_id)
    assert (status.state, status.exit_code, status.reason) == (EXITED, 3, "Error")
