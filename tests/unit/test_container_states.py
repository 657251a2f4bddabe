"""The container state machine: every transition, legal and not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.state import containers
from pycri.state.containers import ContainerState, IllegalTransition
from tests.unit.test_state_store import container

pytestmark = pytest.mark.unit


def test_created_to_running_to_exited() -> None:
    running = containers.started(container("a" * 64), 100)
    assert running.state is ContainerState.RUNNING and running.started_at == 100
    done = containers.exited(running, 0, 200)
    assert (done.state, done.exit_code, done.finished_at, done.reason) == (ContainerState.EXITED, 0, 200, "Completed")


def test_exit_reasons() -> None:
    running = containers.started(container("a" * 64), 100)
    assert containers.exited(running, 1, 200).reason == "Error"
    assert containers.exited(running, 137, 200, oom_killed=True).reason == "OOMKilled"
    assert containers.exited(running, 255, 200, reason="Unknown", message="rebooted").message == "rebooted"


def test_a_created_container_may_exit_without_running() -> None:
    assert containers.exited(container("a" * 64), 137, 5).state is ContainerState.EXITED


def test_unknown_may_still_resolve() -> None:
    lost = containers.unknown(containers.started(container("a" * 64), 1), "runc state failed")
    assert lost.state is ContainerState.UNKNOWN and lost.reason == "Unknown"
    assert containers.exited(lost, 0, 9).state is ContainerState.EXITED


def test_exited_is_final() -> None:
    done = containers.exited(containers.started(container("a" * 64), 1), 0, 2)
    for change in (lambda r: containers.started(r, 3), lambda r: containers.exited(r, 0, 3)):
        with pytest.raises(IllegalTransition, match="exited"):
            change(done)
    with pytest.raises(IllegalTransition):
        containers.resources_updated(done, containers.api_pb2.LinuxContainerResources())


def test_running_cannot_start_again() -> None:
    with pytest.raises(IllegalTransition, match="running; it cannot become running"):
        containers.started(containers.started(container("a" * 64), 1), 2)


@given(st.integers(min_value=0, max_value=2**62), st.integers(min_value=0, max_value=2**62))
def test_finish_is_never_before_start(started_at: int, finished_at: int) -> None:
    done = containers.exited(containers.started(container("a" * 64), started_at), 0, finished_at)
    assert done.finished_at >= done.started_at
