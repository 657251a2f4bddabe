"""Metrics and traces, both off unless the config asks for them.

The rest of pycri calls the hooks here. While telemetry is off a hook checks a module
global and returns: prometheus_client and opentelemetry are imported by `start` only, and
only for the part the config turns on ([metrics] address, [tracing] endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from pycri.config import Config, parse_host_port
from pycri.errors import PycriError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from pycri.state.memory import StateStore
    from pycri.telemetry.metrics import Metrics, MetricsServer
    from pycri.telemetry.tracing import Tracing

Attribute = str | int | float | bool

_metrics: Metrics | None = None
_tracing: Tracing | None = None
_server: MetricsServer | None = None
_NOTHING = contextlib.nullcontext()


class MetricsUnavailable(RuntimeError):
    """The metrics address cannot be listened on (taken, or not an address of this host)."""


def enabled() -> bool:
    return _metrics is not None or _tracing is not None


async def start(config: Config, state: StateStore) -> None:
    """Serve metrics on [metrics] address and send spans to [tracing] endpoint, each only when set."""
    global _server
    metrics = tracing = None
    if config.metrics.address:
        from pycri.telemetry.metrics import Metrics, MetricsServer

        metrics = Metrics(state)
        server = MetricsServer(metrics)
        try:
            await server.start(*parse_host_port(config.metrics.address))
        except OSError as error:
            raise MetricsUnavailable(
                f"config key 'metrics.address': cannot listen on {config.metrics.address}: {error.strerror or error}"
            ) from error
        _server = server
    if config.tracing.endpoint:
        from pycri.telemetry.tracing import Tracing, otlp_processor

        settings = config.tracing
        tracing = Tracing(settings.service_name, settings.sampling_ratio, otlp_processor(settings.endpoint))
    install(metrics, tracing)


def install(metrics: Metrics | None, tracing: Tracing | None) -> None:
    """Make the hooks report to `metrics` and `tracing` (None: that part off)."""
    global _metrics, _tracing
    _metrics, _tracing = metrics, tracing


async def stop() -> None:
    """Stop serving metrics, and send the spans still buffered (the exporter's own timeout bounds it)."""
    global _server
    tracing, server = _tracing, _server
    install(None, None)
    _server = None
    if server is not None:
        await server.close()
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)


def status_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC status a failure reaches the caller with."""
    if isinstance(error, PycriError):
        return error.code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


# ---- the hooks ----


def span(name: str, attributes: Mapping[str, Attribute] | None = None) -> AbstractContextManager[object]:
    """A span for one step of the current call (image.unpack, cni.add, oci.create ...)."""
    if _tracing is None:
        return _NOTHING
    return _tracing.span(name, attributes or {})


class RpcCall:
    """Around one CRI call: timed and counted by the status it ends with, and traced as a server
    span whose parent is the caller's W3C traceparent. A call cancelled (its caller went away or
    its deadline passed) counts as CANCELLED."""

    __slots__ = ("_service", "_method", "_context", "_started", "_tracing", "_scope", "_span")

    def __init__(self, service: str, method: str, context: grpc.aio.ServicerContext) -> None:
        self._service = service
        self._method = method
        self._context = context
        self._tracing = _tracing
        self._scope: AbstractContextManager[Span] | None = None
        self._span: Span | None = None

    def __enter__(self) -> None:
        self._started = time.monotonic()
        if self._tracing is not None:
            self._scope = self._tracing.rpc_span(self._service, self._method, self._context.invocation_metadata() or ())
            self._span = self._scope.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:  # an error has been turned into a status with context.abort before it gets here
            code = self._context.code() or grpc.StatusCode.OK
        if _metrics is not None:
            _metrics.rpc_done(self._service, self._method, code.name, time.monotonic() - self._started)
        if self._tracing is not None and self._scope is not None and self._span is not None:
            self._tracing.rpc_finished(self._span, code, self._context.details() or "")
            self._scope.__exit__(exc_type, exc, tb)


def image_pull(image: str) -> AbstractContextManager[object]:
    """Around one pull: counted, timed and traced (image.pull)."""
    if _metrics is None and _tracing is None:
        return _NOTHING
    return _image_pull(image)


@contextlib.contextmanager
def _image_pull(image: str) -> Iterator[None]:
    started = time.monotonic()
    code = grpc.StatusCode.OK
    try:
        with span("image.pull", {"container.image.name": image}):
            yield
    except BaseException as error:
        code = status_of(error)
        raise
    finally:
        if _metrics is not None:
            _metrics.image_pull_done(time.monotonic() - started, code.name)


def image_bytes_read(count: int) -> None:
    """Bytes of an image blob received from a registry."""
    if _metrics is not None:
        _metrics.image_bytes_read(count)


def recovery_done(seconds: float, orphans_by_kind: Mapping[str, int]) -> None:
    if _metrics is not None:
        _metrics.recovery_done(seconds, orphans_by_kind)


def stream_session(kind: str) -> AbstractContextManager[object]:
    """Around one exec, attach or port-forward session: counted while open."""
    if _metrics is None:
        return _NOTHING
    return _stream_session(_metrics, kind)


@contextlib.contextmanager
def _stream_session(metrics: Metrics, kind: str) -> Iterator[None]:
    metrics.stream_session_opened(kind)
    try:
        yield
    finally:
        metrics.stream_session_closed(kind)
