"""OpenTelemetry spans for CRI calls and the steps under them, sent over OTLP gRPC.

Imported only when [tracing] endpoint is set. The tracer provider is pycri's own, not the
process-global one, so nothing but pycri's hooks makes spans through it. A call's parent is
the W3C traceparent (and tracestate) in its gRPC metadata, which kubelet and
`crictl --enable-tracing` send: their spans and pycri's form one trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import grpc
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pycri import __version__

Metadata = Sequence[tuple[str, str | bytes]]
Attributes = Mapping[str, str | int | float | bool]


class _MetadataGetter(Getter[Metadata]):
    """Reads propagation fields from gRPC metadata (keys arrive lower-case, as W3C's do)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [value for name, value in carrier if name == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [name for name, _ in carrier]


_METADATA = _MetadataGetter()


class Tracing:
    def __init__(self, service_name: str, sampling_ratio: float, processor: SpanProcessor) -> None:
        resource = Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: __version__})
        # A caller's traceparent decides for the traces it starts; the ratio, for the ones pycri starts.
        sampler = ParentBased(TraceIdRatioBased(sampling_ratio))
        self._provider = TracerProvider(resource=resource, sampler=sampler)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("pycri", __version__)
        self._propagator = TraceContextTextMapPropagator()

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Span]:
        """A child of the current span, current itself while the block runs."""
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def rpc_span(self, service: str, method: str, metadata: Metadata) -> AbstractContextManager[Span]:
        """The server span of one call, named as OpenTelemetry's RPC conventions say: service/method."""
        parent = self._propagator.extract(metadata, getter=_METADATA)
        return self._tracer.start_as_current_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def rpc_finished(span: Span, code: grpc.StatusCode, message: str) -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}" if message else code.name))

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        self._provider.shutdown()


def otlp_processor(endpoint: str) -> SpanProcessor:
    """Batches spans to an OTLP gRPC collector; TLS only for an https:// endpoint."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    return BatchSpanProcessor(exporter)
