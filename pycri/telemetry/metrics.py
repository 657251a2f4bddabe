"""Prometheus metrics: what pycri counts and the HTTP endpoint that serves it.

Imported only when [metrics] address is set. Pods and containers by state are read from
the in-memory StateStore at each scrape, so those figures cannot drift from the records.
The endpoint runs on the daemon's event loop, the one thread that changes the StateStore.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pycri.state.containers import ContainerState
from pycri.state.memory import StateStore

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# CRI calls run from a millisecond (List, Status) to minutes (a RunPodSandbox behind a slow CNI plugin).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STREAM_KINDS = ("exec", "attach", "portforward")


class StateCollector(Collector):
    """pycri_pods and pycri_containers by state, counted from memory when scraped."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        pods = GaugeMetricFamily("pycri_pods", "Pod sandboxes pycri knows, by state.", labels=["state"])
        ready = sum(1 for record in self._state.sandboxes() if record.ready)
        pods.add_metric(["ready"], ready)
        pods.add_metric(["notready"], len(self._state.sandbox_ids()) - ready)
        yield pods
        counts = dict.fromkeys(ContainerState, 0)
        for record in self._state.containers():
            counts[record.state] += 1
        containers = GaugeMetricFamily("pycri_containers", "Containers pycri knows, by state.", labels=["state"])
        for container_state, count in counts.items():
            containers.add_metric([container_state.value], count)
        yield containers


class Metrics:
    """Every metric pycri exports, in a registry of its own."""

    def __init__(self, state: StateStore | None = None) -> None:
        # No <name>_created series beside each counter and histogram (a process-wide switch; pycri's
        # registry is the only one in the daemon): scrapers read process_start_time_seconds instead.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        if state is not None:
            self.registry.register(StateCollector(state))
        registry = self.registry
        self._rpcs = Counter(
            "pycri_grpc_requests",
            "CRI calls handled, by service, method and gRPC status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self._rpc_seconds = Histogram(
            "pycri_grpc_request_duration_seconds",
            "Time from a CRI call's arrival to its reply or error, by service and method.",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._pulls = Counter("pycri_image_pulls", "Image pulls finished, failed or not.", registry=registry)
        self._pull_failures = Counter(
            "pycri_image_pull_failures", "Image pulls that failed, by gRPC status code.", ["code"], registry=registry
        )
        self._pull_seconds = Histogram(
            "pycri_image_pull_duration_seconds", "Time a successful image pull took.", buckets=PULL_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._pull_bytes = Counter(
            "pycri_image_pull_bytes", "Bytes of image configs and layers read from registries.", registry=registry
        )
        self._recovery_seconds = Gauge(
            "pycri_recovery_duration_seconds",
            "Time the recovery at this start took: reconcile, unfinished operations, orphan sweep, image recovery.",
            registry=registry,
        )
        self._orphans = Gauge(
            "pycri_recovery_orphans_removed",
            "What the orphan sweep at this start removed, by kind.",
            ["kind"],
            registry=registry,
        )
        self._sessions = Gauge(
            "pycri_streaming_sessions", "Exec, attach and port-forward sessions open now.", ["kind"], registry=registry
        )
        for kind in STREAM_KINDS:
            self._sessions.labels(kind)

    def rpc_done(self, service: str, method: str, code: str, seconds: float) -> None:
        self._rpcs.labels(service, method, code).inc()
        self._rpc_seconds.labels(service, method).observe(seconds)

    def image_pull_done(self, seconds: float, code: str) -> None:
        self._pulls.inc()
        if code == "OK":
            self._pull_seconds.observe(seconds)
        else:
            self._pull_failures.labels(code).inc()

    def image_bytes_read(self, count: int) -> None:
        self._pull_bytes.inc(count)

    def recovery_done(self, seconds: float, orphans_by_kind: Mapping[str, int]) -> None:
        self._recovery_seconds.set(seconds)
        for kind, count in orphans_by_kind.items():
            self._orphans.labels(kind.replace(" ", "_")).set(count)

    def stream_session_opened(self, kind: str) -> None:
        self._sessions.labels(kind).inc()

    def stream_session_closed(self, kind: str) -> None:
        self._sessions.labels(kind).dec()

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry's samples in the format `accept` asks for (Prometheus text or OpenMetrics)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class MetricsServer:
    """GET /metrics over HTTP on the daemon's event loop."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("serving metrics", extra={"fields": {"address": f"{host}:{port}", "path": METRICS_PATH}})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _scrape(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.exposition(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
