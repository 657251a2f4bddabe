"""Telemetry through a real daemon: /metrics scraped while a pod runs and after a restart, and
`crictl --enable-tracing` against an OTLP receiver of the test's own, where crictl's spans and
pycri's join in one trace."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import TEST_NAMESPACE, running_node
from tests.support.busybox_images import TestImages
from tests.support.crictl import crictl_ok, needs_crictl
from tests.support.pods import SLEEP_FOREVER, container_config, workloads_on

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_are_served_while_a_pod_runs_and_after_a_restart(test_images: TestImages) -> None:
    port = free_port()
    settings = {"runtime": {"pause_image": test_images.pause.reference}, "metrics": {"address": f"127.0.0.1:{port}"}}
    runtime = {"service": "runtime.v1.RuntimeService"}
    with running_node(settings) as node, workloads_on(node) as work:
        work.pull(test_images.busybox.reference)
        with pytest.raises(grpc.RpcError) as missing:
            work.pull(test_images.busybox.tagged("no-such-tag"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        pod = work.pod("metrics")
        work.run(pod, container_config("sleeper", test_images.busybox.reference, *SLEEP_FOREVER))
        with pytest.raises(grpc.RpcError):
            work.status("0" * 64)

        samples = scrape(port)
        assert value(samples, "pycri_pods", state="ready") == 1
        assert value(samples, "pycri_pods", state="notready") == 0
        assert value(samples, "pycri_containers", state="running") == 1
        assert value(samples, "pycri_containers", state="created") == 0
        assert value(samples, "pycri_grpc_requests_total", method="RunPodSandbox", code="OK", **runtime) == 1
        assert value(samples, "pycri_grpc_requests_total", method="StartContainer", code="OK", **runtime) == 1
        assert value(samples, "pycri_grpc_requests_total", method="ContainerStatus", code="NOT_FOUND", **runtime) == 1
        run_pod = {"method": "RunPodSandbox", **runtime}
        assert value(samples, "pycri_grpc_request_duration_seconds_count", **run_pod) == 1
        assert value(samples, "pycri_grpc_request_duration_seconds_bucket", le="+Inf", **run_pod) == 1
        assert value(samples, "pycri_image_pulls_total") == 2
        assert value(samples, "pycri_image_pull_failures_total", code="NOT_FOUND") == 1
        assert value(samples, "pycri_image_pull_duration_seconds_count") == 1
        busybox = test_images.busybox.image
        assert value(samples, "pycri_image_pull_bytes_total") == busybox.size - len(busybox.manifest)
        assert value(samples, "pycri_recovery_duration_seconds") > 0
        assert value(samples, "pycri_streaming_sessions", kind="exec") == 0
        assert value(samples, "process_resident_memory_bytes") > 0

        assert node.daemon.stop() == 0
        orphan = node.daemon.base / "root" / "containers" / secrets.token_hex(32)
        orphan.mkdir()
        node.daemon.start()
        work.reconnect()
        samples = scrape(port)
        assert not orphan.exists()
        assert value(samples, "pycri_recovery_orphans_removed", kind="directory") == 1
        assert value(samples, "pycri_pods", state="ready") == 1
        assert value(samples, "pycri_containers", state="running") == 1


@dataclass
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP gRPC trace receiver on 127.0.0.1 that keeps what it is sent."""

    spans: list[ExportedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    received.append(
                        ExportedSpan(
                            resource.get("service.name", ""), span.name, span.trace_id.hex(), span.span_id.hex(),
                            span.parent_span_id.hex(), attributes,
                        )
                    )  # fmt: skip
        with self.lock:
            self.spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, service: str, name: str) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans if (s.service, s.name) == (service, name)]

    def one(self, service: str, name: str) -> ExportedSpan:
        (found,) = self.named(service, name)
        return found

    def children(self, parent: ExportedSpan) -> set[str]:
        with self.lock:
            return {s.name for s in self.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id}


@pytest.fixture
def otlp() -> Iterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"127.0.0.1:{port}"
    server.stop(None)


def crictl_json(directory: Path, name: str, config: dict[str, object]) -> str:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


@needs_crictl
def test_crictl_tracing_joins_pycri_spans(
    test_images: TestImages, otlp: tuple[OtlpReceiver, str], tmp_path: Path
) -> None:
    receiver, endpoint = otlp
    image = test_images.busybox.reference
    pod = crictl_json(tmp_path, "pod", {
        "metadata": {"name": "traced", "namespace": TEST_NAMESPACE, "uid": secrets.token_hex(8)},
        "log_directory": str(tmp_path / "logs"),
        "linux": {"security_context": {"namespace_options": {"pid": api_pb2.NamespaceMode.CONTAINER}}},
    })  # fmt: skip
    container = crictl_json(tmp_path, "container", {
        "metadata": {"name": "sleeper"}, "image": {"image": image}, "command": list(SLEEP_FOREVER),
        "log_path": "sleeper.log",
    })  # fmt: skip
    with running_node({"tracing": {"endpoint": endpoint, "service_name": "pycri-test"}}) as node:
        traced = (node.daemon.endpoint, "--enable-tracing", "--tracing-endpoint", endpoint)
        crictl_ok(*traced, "pull", image)
        sandbox_id = crictl_ok(*traced, "runp", pod).strip()
        container_id = crictl_ok(*traced, "create", sandbox_id, container, pod).strip()
        crictl_ok(*traced, "start", container_id)
        crictl_ok(*traced, "rmp", "--force", sandbox_id)
        assert node.daemon.stop() == 0  # pycri sends what it holds as it stops

    for method, steps in [
        ("runtime.v1.ImageService/PullImage", {"image.pull"}),
        ("runtime.v1.RuntimeService/RunPodSandbox", {"cni.add"}),
        ("runtime.v1.RuntimeService/CreateContainer", {"oci.create"}),
        ("runtime.v1.RuntimeService/StartContainer", {"oci.start"}),
    ]:
        client = receiver.one("cri-tools", method)
        server = receiver.one("pycri-test", method)
        assert (server.trace_id, server.parent_id) == (client.trace_id, client.span_id), method
        assert server.attributes["rpc.method"] == method.rpartition("/")[2]
        assert steps <= receiver.children(server), method
    pull = receiver.one("pycri-test", "image.pull")
    assert pull.attributes["container.image.name"] == image
    assert receiver.children(pull) >= {"image.fetch", "image.unpack"}
    removals = receiver.named("pycri-test", "cni.del")
    assert removals and {s.trace_id for s in removals} == {receiver.one("cri-tools", "rmp").trace_id}
