"""GetContainerEvents: created, started, stopped (as the container exits) and deleted, in order."""

from __future__ import annotations

import contextlib
import threading

import grpc
import pytest

from pycri.api import api_pb2
from tests.support.busybox_images import TestImages
from tests.support.pods import Workloads, container_config, shell, wait_until

pytestmark = pytest.mark.integration
EVENT = api_pb2.ContainerEventType


def test_lifecycle_events_arrive_in_order(work: Workloads, test_images: TestImages) -> None:
    stream = work.runtime.GetContainerEvents(api_pb2.GetEventsRequest())
    events: list[api_pb2.ContainerEventResponse] = []

    def collect() -> None:
        with contextlib.suppress(grpc.RpcError):  # the stream ends CANCELLED below
            for event in stream:
                events.append(event)

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        pod = work.pod("events")
        container_id = work.run(pod, container_config("brief", test_images.busybox.reference, *shell("sleep 1")))
        wait_until(lambda: len([e for e in events if e.container_id == container_id]) >= 3, "the stopped event")
        work.remove(container_id)
        wait_until(lambda: len([e for e in events if e.container_id == container_id]) >= 4, "the deleted event")
    finally:
        stream.cancel()
        reader.join()
    mine = [e for e in events if e.container_id == container_id]
    kinds = [e.container_event_type for e in mine]
    assert kinds == [
        EVENT.CONTAINER_CREATED_EVENT,
        EVENT.CONTAINER_STARTED_EVENT,
        EVENT.CONTAINER_STOPPED_EVENT,
        EVENT.CONTAINER_DELETED_EVENT,
    ]
    stopped = mine[2]
    assert stopped.pod_sandbox_status.id == pod.id
    assert [s.exit_code for s in stopped.containers_statuses if s.id == container_id] == [0]
