"""pycri killed (SIGKILL) at every named kill point of the pod and container operations: after a
restart the object is absent or consistent, the same call works, and once everything is removed
through CRI the host holds nothing more than before. Also a simulated reboot, and a pause PID
taken by an unrelated process while pycri was down.

Each case has a daemon of its own (tests/support/fault_node.py) started with PYCRI_KILL_POINT
armed; the image kill points are covered in test_image_faults.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from pycri.api import api_pb2
from pycri.faults import KILL_POINTS
from tests.support.busybox_images import TestImages
from tests.support.fault_node import SETTLE_SECONDS, FaultNode, fault_node, simulate_reboot
from tests.support.leaks import take, wait_for_no_leaks
from tests.support.pods import CREATED, EXITED, RUNNING, SLEEP_FOREVER, Pod, Workloads, container_config, shell

pytestmark = pytest.mark.integration

READY = api_pb2.PodSandboxState.SANDBOX_READY
NOTREADY = api_pb2.PodSandboxState.SANDBOX_NOTREADY
SHARED_PID = api_pb2.NamespaceMode.POD
PID_ATTEMPTS = 50
STOP_GRACE_SECONDS = 10
# sh as PID 1 gets SIGTERM only with a handler; `wait` lets the trap run at once.
EXITS_ON_SIGTERM = shell("trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
# Image kill points: test_image_faults.py; the checkpoint's (it needs CRIU's probe to pass): test_checkpoint_faults.py.
POD_POINTS = [
    name for name in KILL_POINTS if not name.startswith(("pull_image.", "remove_image.", "checkpoint_container."))
]


# ---- what each operation needs, does, and must look like after a kill ----


def shared_pid_pod_config(work: Workloads, name: str) -> api_pb2.PodSandboxConfig:
    """A pod with a network namespace and a pause process as PID 1 of a shared PID namespace."""
    config = work.pod_config(name)
    config.linux.security_context.namespace_options.pid = SHARED_PID
    return config


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode | None:
    """None when `call` succeeds, else the status code it failed with."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return None


def state_name(state: int) -> str:
    return api_pb2.ContainerState.Name(state)


def pod_state_name(state: int) -> str:
    return api_pb2.PodSandboxState.Name(state)


@dataclass
class Case:
    """One kill point's run: the pod and container the operation is about."""

    fault: FaultNode
    point: str
    pod_config: api_pb2.PodSandboxConfig | None = None
    pod: Pod | None = None
    container_id: str = ""

    @property
    def work(self) -> Workloads:
        return self.fault.work

    @property
    def committed(self) -> bool:
        return self.point.endswith(".committed")

    @property
    def pod_id(self) -> str:
        assert self.pod is not None
        return self.pod.id

    def sleeper(self, command: tuple[str, ...] = SLEEP_FOREVER) -> api_pb2.ContainerConfig:
        assert self.pod is not None
        config = container_config("sleeper", self.fault.images.busybox.reference, *command)
        if self.pod.config.linux.security_context.namespace_options.pid == SHARED_PID:
            config.linux.security_context.namespace_options.pid = SHARED_PID
        return config

    def run_pod(self, shared_pid: bool) -> None:
        name = "faulted"
        self.pod = self.work.run_pod(
            shared_pid_pod_config(self.work, name) if shared_pid else self.work.pod_config(name)
        )

    def run_sleeper(self, command: tuple[str, ...] = SLEEP_FOREVER) -> None:
        assert self.pod is not None
        self.container_id = self.work.run(self.pod, self.sleeper(command))
        self.work.wait_for_state(self.container_id, RUNNING)

    def assert_really_running(self) -> None:
        assert self.work.status(self.container_id).state == RUNNING
        self.work.output(self.container_id, "true")


@dataclass(frozen=True)
class Operation:
    prepare: Callable[[Case], None]
    act: Callable[[Case], object]
    check_after_restart: Callable[[Case], None]
    retry: Callable[[Case], None]


def prepare_pod_config(case: Case) -> None:
    case.pod_config = shared_pid_pod_config(case.work, "faulted")


def run_pod_act(case: Case) -> object:
    assert case.pod_config is not None
    return case.work.run_pod(case.pod_config)


def run_pod_check(case: Case) -> None:
    listed = [(pod.metadata.name, pod_state_name(pod.state)) for pod in case.fault.pods()]
    if not case.committed:
        assert listed == [], f"a pod killed at {case.point}, before its commit, is listed: {listed}"
        return
    assert listed == [("faulted", "SANDBOX_READY")], f"killed at {case.point}, the pods are {listed}"
    assert case.pod_config is not None
    case.pod = Pod(case.fault.pods()[0].id, case.pod_config)


def run_pod_retry(case: Case) -> None:
    assert case.pod_config is not None
    try:
        case.pod = case.work.run_pod(case.pod_config)
    except grpc.RpcError as error:
        if not (case.committed and error.code() == grpc.StatusCode.ALREADY_EXISTS):
            raise
    assert len(case.fault.pods()) == 1
    assert case.work.pod_status(case.pod_id).state == READY
    case.run_sleeper()


def create_prepare(case: Case) -> None:
    case.run_pod(shared_pid=False)


def create_act(case: Case) -> object:
    assert case.pod is not None
    return case.work.create(case.pod, case.sleeper())


def create_check(case: Case) -> None:
    listed = [(container.metadata.name, state_name(container.state)) for container in case.work.list()]
    if not case.committed:
        assert listed == [], f"a container killed at {case.point}, before its commit, is listed: {listed}"
        return
    assert listed == [("sleeper", "CONTAINER_CREATED")], f"killed at {case.point}, the containers are {listed}"
    case.container_id = case.work.list()[0].id


def create_retry(case: Case) -> None:
    assert case.pod is not None
    try:
        case.container_id = case.work.create(case.pod, case.sleeper())
    except grpc.RpcError as error:
        if not (case.committed and error.code() == grpc.StatusCode.ALREADY_EXISTS):
            raise
    assert len(case.work.list()) == 1
    case.work.start(case.container_id)
    case.assert_really_running()


def start_prepare(case: Case) -> None:
    case.run_pod(shared_pid=False)
    case.container_id = case.work.create(case.pod, case.sleeper())


def start_check(case: Case) -> None:
    state = case.work.status(case.container_id).state
    # Before `runc start` nothing runs; after it the process does, whatever was persisted.
    allowed = (CREATED, RUNNING) if case.point == "start_container.intent" else (RUNNING,)
    assert state in allowed, f"killed at {case.point}: {state_name(state)}"
    if state == RUNNING:
        case.assert_really_running()


def start_retry(case: Case) -> None:
    was_running = case.work.status(case.container_id).state == RUNNING
    code = rpc_code(lambda: case.work.start(case.container_id))
    assert code is None or was_running, f"StartContainer of a container that is not running failed with {code}"
    case.assert_really_running()


def stop_container_prepare(case: Case) -> None:
    case.run_pod(shared_pid=False)
    case.run_sleeper(EXITS_ON_SIGTERM)


def stop_container_act(case: Case) -> object:
    # The stop signal (and so the kill point) comes before SIGKILL only with a grace period.
    return case.work.stop(case.container_id, timeout=STOP_GRACE_SECONDS)


def stop_container_check(case: Case) -> None:
    status = case.work.status(case.container_id)
    assert status.state in (RUNNING, EXITED), f"killed at {case.point}: {state_name(status.state)}"
    assert status.state != EXITED or status.finished_at != 0


def stop_container_retry(case: Case) -> None:
    case.work.stop(case.container_id, timeout=STOP_GRACE_SECONDS)
    assert case.work.status(case.container_id).state == EXITED


def remove_container_prepare(case: Case) -> None:
    case.run_pod(shared_pid=False)
    case.run_sleeper()
    case.work.stop(case.container_id)


def remove_container_check(case: Case) -> None:
    listed = [(container.id, state_name(container.state)) for container in case.work.list()]
    assert listed in ([], [(case.container_id, "CONTAINER_EXITED")]), f"killed at {case.point}: {listed}"


def remove_container_retry(case: Case) -> None:
    case.work.remove(case.container_id)
    assert case.work.list() == []
    assert rpc_code(lambda: case.work.status(case.container_id)) == grpc.StatusCode.NOT_FOUND


def stop_pod_prepare(case: Case) -> None:
    case.run_pod(shared_pid=True)
    case.run_sleeper()


def stop_pod_check(case: Case) -> None:
    pods = [(pod.id, pod.state) for pod in case.fault.pods()]
    assert [pod_id for pod_id, _state in pods] == [case.pod_id], f"killed at {case.point}, the pods are {pods}"
    container_state = case.work.status(case.container_id).state
    assert container_state in (RUNNING, EXITED), f"killed at {case.point}: {state_name(container_state)}"
    if pods[0][1] == NOTREADY:
        assert container_state == EXITED, f"killed at {case.point}: a NOTREADY pod with a running container"


def stop_pod_retry(case: Case) -> None:
    case.work.stop_pod(case.pod_id)
    pod_state, container_state = case.work.pod_status(case.pod_id).state, case.work.status(case.container_id).state
    assert (pod_state, container_state) == (NOTREADY, EXITED), (
        f"after StopPodSandbox: pod {pod_state_name(pod_state)}, container {state_name(container_state)}"
    )
    assert take(case.fault.daemon).ip_allocations == {}, "a stopped pod still holds its address"


def remove_pod_prepare(case: Case) -> None:
    stop_pod_prepare(case)
    case.work.stop_pod(case.pod_id)


def remove_pod_check(case: Case) -> None:
    pods = [(pod.id, pod_state_name(pod.state)) for pod in case.fault.pods()]
    assert pods in ([], [(case.pod_id, "SANDBOX_NOTREADY")]), f"killed at {case.point}, the pods are {pods}"
    containers = [state_name(container.state) for container in case.work.list()]
    assert set(containers) <= {"CONTAINER_EXITED"}, f"killed at {case.point}, the containers are {containers}"


def remove_pod_retry(case: Case) -> None:
    case.work.remove_pod(case.pod_id)
    assert case.fault.pods() == [] and case.work.list() == []


OPERATIONS: dict[str, Operation] = {
    "run_pod_sandbox": Operation(prepare_pod_config, run_pod_act, run_pod_check, run_pod_retry),
    "create_container": Operation(create_prepare, create_act, create_check, create_retry),
    "start_container": Operation(
        start_prepare, lambda case: case.work.start(case.container_id), start_check, start_retry
    ),
    "stop_container": Operation(
        stop_container_prepare,
        stop_container_act,
        stop_container_check,
        stop_container_retry,
    ),
    "remove_container": Operation(
        remove_container_prepare,
        lambda case: case.work.remove(case.container_id),
        remove_container_check,
        remove_container_retry,
    ),
    "stop_pod_sandbox": Operation(
        stop_pod_prepare, lambda case: case.work.stop_pod(case.pod_id), stop_pod_check, stop_pod_retry
    ),
    "remove_pod_sandbox": Operation(
        remove_pod_prepare, lambda case: case.work.remove_pod(case.pod_id), remove_pod_check, remove_pod_retry
    ),
}


@pytest.mark.parametrize("point", POD_POINTS)
def test_killed_at_point_recovers_and_leaks_nothing(point: str, test_images: TestImages) -> None:
    operation = OPERATIONS[point.split(".")[0]]
    with fault_node(test_images, point) as fault:
        fault.pull_images()
        baseline = take(fault.daemon)
        case = Case(fault, point)
        operation.prepare(case)
        fault.kill_during(point, lambda: operation.act(case))
        fault.restart_unarmed()
        operation.check_after_restart(case)
        operation.retry(case)
        fault.remove_everything()
        wait_for_no_leaks(fault.daemon, baseline)


def test_reboot_leaves_pods_not_ready_and_containers_exited(test_images: TestImages) -> None:
    with fault_node(test_images) as fault:
        fault.pull_images()
        baseline = take(fault.daemon)
        case = Case(fault, "reboot")
        case.run_pod(shared_pid=False)
        case.run_sleeper()
        assert fault.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        simulate_reboot(fault)
        fault.restart_unarmed()
        # Every call below must be answered: none may wait on a process or a mount that is gone.
        pod_state = fault.work.pod_status(case.pod_id).state
        assert pod_state == NOTREADY, f"a pod whose namespaces a reboot removed is {pod_state_name(pod_state)}"
        status = fault.work.status(case.container_id)
        assert (status.state, bool(status.reason)) == (EXITED, True), (
            f"a container a reboot ended is {state_name(status.state)}, reason {status.reason!r}"
        )
        fault.work.stop(case.container_id)
        fault.work.stop_pod(case.pod_id)
        fault.work.remove_pod(case.pod_id)
        assert fault.pods() == [] and fault.work.list() == []
        wait_for_no_leaks(fault.daemon, baseline)


def test_a_pause_pid_reused_while_pycri_was_down_is_left_alone(test_images: TestImages) -> None:
    with fault_node(test_images) as fault:
        fault.pull_images()
        baseline = take(fault.daemon)
        case = Case(fault, "pid reuse")
        case.run_pod(shared_pid=True)
        pause = psutil.Process(int(fault.work.pod_info(case.pod_id)["pid"]))
        conmon = pause.parent()
        assert conmon is not None and conmon.name() == "conmon"
        assert fault.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        # Its conmon first, so no exit file tells pycri the pause process is gone.
        for process in (conmon, pause):
            process.kill()
            assert psutil.wait_procs([process], timeout=SETTLE_SECONDS)[1] == []
        with process_with_pid(pause.pid) as impostor:
            fault.restart_unarmed()
            pod_state = fault.work.pod_status(case.pod_id).state
            assert pod_state == NOTREADY, f"a pod whose pause pid another process took is {pod_state_name(pod_state)}"
            fault.work.stop_pod(case.pod_id)
            fault.work.remove_pod(case.pod_id)
            assert impostor.poll() is None, "pycri signalled a process that only has the pause process's old pid"
        wait_for_no_leaks(fault.daemon, baseline)


@contextlib.contextmanager
def process_with_pid(pid: int) -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep` of ours that got `pid` (the kernel's last pid set just below it before each try);
    the test is skipped when other processes of the host keep taking the pid first."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    for _attempt in range(PID_ATTEMPTS):
        last_pid.write_text(str(pid - 1))
        process = subprocess.Popen(["sleep", "600"])
        if process.pid == pid:
            break
        process.kill()
        process.wait()
    else:
        pytest.skip(f"pid {pid} went to other processes of the host {PID_ATTEMPTS} times")
    try:
        yield process
    finally:
        process.kill()
        process.wait()
