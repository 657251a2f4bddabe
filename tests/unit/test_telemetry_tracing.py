"""CRI calls through the real dispatch on a real gRPC server, traced into the OpenTelemetry SDK's
in-memory exporter and counted in pycri's metrics: parents from the caller's traceparent, step
spans under the call's span, status codes from errors, crashes and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pycri import telemetry
from pycri.api import api_pb2, api_pb2_grpc
from pycri.errors import NotFound
from pycri.server.dispatch import service_handler
from pycri.telemetry.metrics import Metrics
from pycri.telemetry.tracing import Tracing

pytestmark = pytest.mark.unit

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
SERVICE = "runtime.v1.RuntimeService"


def traceparent(sampled: bool = True) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-{'01' if sampled else '00'}"),)


async def version(daemon: Any, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
    async def in_a_task() -> None:
        with telemetry.span("step.in_task"):
            await asyncio.sleep(0)

    with telemetry.span("step", {"pycri.step": 1}):
        await asyncio.create_task(in_a_task())
    return api_pb2.VersionResponse(version="0.1.0", runtime_name="pycri")


async def container_status(daemon: Any, request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse:
    raise NotFound(f"container {request.container_id!r} not found")


async def pod_status(daemon: Any, request: api_pb2.PodSandboxStatusRequest) -> api_pb2.PodSandboxStatusResponse:
    raise ValueError("a bug")


async def stop_pod(daemon: Any, request: api_pb2.StopPodSandboxRequest) -> api_pb2.StopPodSandboxResponse:
    await asyncio.Event().wait()  # until the caller gives up
    raise AssertionError("unreachable")


async def container_events(
    daemon: Any, request: api_pb2.GetEventsRequest
) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    for container_id in ("a", "b"):
        with telemetry.span("event"):
            yield api_pb2.ContainerEventResponse(container_id=container_id)


HANDLERS: dict[str, Any] = {
    "Version": version,
    "ContainerStatus": container_status,
    "PodSandboxStatus": pod_status,
    "StopPodSandbox": stop_pod,
    "GetContainerEvents": container_events,
}


class Observed:
    def __init__(self, exporter: InMemorySpanExporter, metrics: Metrics) -> None:
        self.exporter = exporter
        self.metrics = metrics

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def span(self, name: str) -> ReadableSpan:
        (found,) = self.spans(name)
        return found

    def calls(self, method: str, code: str) -> float | None:
        labels = {"service": SERVICE, "method": method, "code": code}
        return self.metrics.registry.get_sample_value("pycri_grpc_requests_total", labels)


@pytest.fixture
def observed() -> Iterator[Observed]:
    exporter, metrics = InMemorySpanExporter(), Metrics()
    telemetry.install(metrics, Tracing("pycri", 1.0, SimpleSpanProcessor(exporter)))
    yield Observed(exporter, metrics)
    telemetry.install(None, None)


@pytest.fixture
async def runtime(observed: Observed, tmp_path: Path) -> AsyncIterator[api_pb2_grpc.RuntimeServiceStub]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service_handler("RuntimeService", HANDLERS, None),))
    server.add_insecure_port(f"unix:{tmp_path / 'cri.sock'}")
    await server.start()
    async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'cri.sock'}") as channel:
        yield api_pb2_grpc.RuntimeServiceStub(channel)
    await server.stop(None)


async def test_the_callers_traceparent_is_the_parent_of_the_call_span(
    runtime: api_pb2_grpc.RuntimeServiceStub, observed: Observed
) -> None:
    await runtime.Version(api_pb2.VersionRequest(), metadata=traceparent())
    call = observed.span(f"{SERVICE}/Version")
    assert call.kind is SpanKind.SERVER
    assert format(call.context.trace_id, "032x") == TRACE_ID
    assert call.parent is not None and call.parent.is_remote
    assert format(call.parent.span_id, "016x") == CALLER_SPAN_ID
    assert dict(call.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Version", "rpc.grpc.status_code": 0,
    }  # fmt: skip
    assert call.status.status_code is StatusCode.UNSET
    assert call.resource.attributes["service.name"] == "pycri"
    step, in_task = observed.span("step"), observed.span("step.in_task")
    assert step.parent is not None and step.parent.span_id == call.context.span_id
    assert in_task.parent is not None and in_task.parent.span_id == step.context.span_id
    assert step.context.trace_id == in_task.context.trace_id == call.context.trace_id
    assert dict(step.attributes or {}) == {"pycri.step": 1}
    assert observed.calls("Version", "OK") == 1


async def test_a_call_without_traceparent_starts_a_trace(
    runtime: api_pb2_grpc.RuntimeServiceStub, observed: Observed
) -> None:
    await runtime.Version(api_pb2.VersionRequest())
    call = observed.span(f"{SERVICE}/Version")
    assert call.parent is None and format(call.context.trace_id, "032x") != TRACE_ID


@pytest.mark.parametrize(
    ("method", "request_message", "code", "message"),
    [
        ("ContainerStatus", api_pb2.ContainerStatusRequest(container_id="x"), grpc.StatusCode.NOT_FOUND, "not found"),
        ("PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id="x"), grpc.StatusCode.INTERNAL, "a bug"),
        ("ListPodSandbox", api_pb2.ListPodSandboxRequest(), grpc.StatusCode.UNIMPLEMENTED, "not implemented"),
    ],
)
async def test_a_failed_call_is_counted_and_traced_by_its_status(
    runtime: api_pb2_grpc.RuntimeServiceStub,
    observed: Observed,
    method: str,
    request_message: Any,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await getattr(runtime, method)(request_message, metadata=traceparent())
    assert failed.value.code() == code
    call = observed.span(f"{SERVICE}/{method}")
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description is not None and call.status.description.startswith(f"{code.name}: ")
    assert message in call.status.description
    assert (call.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert observed.calls(method, code.name) == 1


async def test_a_call_its_caller_gave_up_on_is_cancelled(
    runtime: api_pb2_grpc.RuntimeServiceStub, observed: Observed
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="x"), timeout=0.2)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    async with asyncio.timeout(30):
        while observed.calls("StopPodSandbox", "CANCELLED") is None:  # the server learns it after the client
            await asyncio.sleep(0.01)
    assert observed.span(f"{SERVICE}/StopPodSandbox").status.status_code is StatusCode.ERROR


async def test_a_stream_is_one_span_over_all_its_replies(
    runtime: api_pb2_grpc.RuntimeServiceStub, observed: Observed
) -> None:
    replies = [reply.container_id async for reply in runtime.GetContainerEvents(api_pb2.GetEventsRequest())]
    assert replies == ["a", "b"]
    call = observed.span(f"{SERVICE}/GetContainerEvents")
    assert [span.parent and span.parent.span_id for span in observed.spans("event")] == [call.context.span_id] * 2
    assert observed.calls("GetContainerEvents", "OK") == 1


def test_the_sampling_ratio_applies_to_traces_pycri_starts_and_a_caller_decides_for_its_own() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing("pycri", 0.0, SimpleSpanProcessor(exporter))
    for metadata in ((), traceparent(sampled=False), traceparent(sampled=True)):
        with tracing.rpc_span(SERVICE, "Version", metadata):
            pass
    assert [format(span.context.trace_id, "032x") for span in exporter.get_finished_spans()] == [TRACE_ID]


def test_an_image_pull_is_counted_timed_and_traced_by_its_outcome(observed: Observed) -> None:
    with telemetry.image_pull("registry.example/app:1"):
        pass
    with pytest.raises(NotFound), telemetry.image_pull("registry.example/app:2"):
        raise NotFound("manifest unknown")
    registry = observed.metrics.registry
    assert registry.get_sample_value("pycri_image_pulls_total") == 2
    assert registry.get_sample_value("pycri_image_pull_failures_total", {"code": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("pycri_image_pull_duration_seconds_count") == 1
    pulled, failed = observed.spans("image.pull")
    assert dict(pulled.attributes or {}) == {"container.image.name": "registry.example/app:1"}
    assert (pulled.status.status_code, failed.status.status_code) == (StatusCode.UNSET, StatusCode.ERROR)
