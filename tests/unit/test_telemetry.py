"""Telemetry: its config keys, the metrics pycri exports, and nothing of it imported while it is off."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pycri.config import ConfigError, load_config, parse_host_port
from pycri.state import containers
from pycri.state.memory import StateStore
from pycri.state.sandboxes import not_ready
from pycri.state.store import Store
from pycri.telemetry.metrics import Metrics
from tests.support.daemon import REPO
from tests.unit.test_state_store import container, pod

pytestmark = pytest.mark.unit


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pycri.toml"
    path.write_text(textwrap.dedent(text))
    return path


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    body, content_type = metrics.exposition("")
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


# ---- config ----


def test_telemetry_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, ""))
    assert (config.metrics.address, config.tracing.endpoint) == ("", "")
    assert (config.tracing.sampling_ratio, config.tracing.service_name) == (1.0, "pycri")


@pytest.mark.parametrize("address", ["127.0.0.1:9090", "[::1]:9090", "0.0.0.0:65535"])
def test_metrics_addresses_are_read(tmp_path: Path, address: str) -> None:
    config = load_config(config_file(tmp_path, f'[metrics]\naddress = "{address}"\n'))
    assert config.metrics.address == address


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "localhost:9090", "127.0.0.1:0", "127.0.0.1:65536", "::1:9090", "[::1]", ":9090", " :1"]
)
def test_a_bad_metrics_address_is_named(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match=r"config key 'metrics\.address'"):
        load_config(config_file(tmp_path, f'[metrics]\naddress = "{address}"\n'))


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:4317", "localhost:4317", "http://otel-collector:4317", "https://collector.example:4317/"]
)
def test_tracing_endpoints_are_read(tmp_path: Path, endpoint: str) -> None:
    config = load_config(config_file(tmp_path, f'[tracing]\nendpoint = "{endpoint}"\nsampling_ratio = 0\n'))
    assert (config.tracing.endpoint, config.tracing.sampling_ratio) == (endpoint, 0.0)


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "ftp://collector:4317", "http://", "grpc://[::1]:4317", "a b:1"])
def test_a_bad_tracing_endpoint_is_named(tmp_path: Path, endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"config key 'tracing\.endpoint'"):
        load_config(config_file(tmp_path, f'[tracing]\nendpoint = "{endpoint}"\n'))


@pytest.mark.parametrize(
    ("text", "key"),
    [("sampling_ratio = 1.5", "tracing.sampling_ratio"), ("sampling_ratio = -0.1", "tracing.sampling_ratio"),
     ("sampling_ratio = nan", "tracing.sampling_ratio"), ('service_name = " "', "tracing.service_name")],
)  # fmt: skip
def test_bad_tracing_settings_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(config_file(tmp_path, f"[tracing]\n{text}\n"))


@given(st.text(max_size=40))
def test_any_host_port_text_is_split_or_refused(text: str) -> None:
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return
    assert 0 < port <= 65535 and port == int(text.rpartition(":")[2])
    if text.startswith("["):
        assert text.startswith(f"[{host}]:") and ipaddress.IPv6Address(host)
    else:
        assert re.fullmatch(r"[A-Za-z0-9.-]+", host) and text.startswith(f"{host}:")


# ---- metrics ----


async def test_pods_and_containers_are_counted_by_state_at_scrape_time(tmp_path: Path) -> None:
    state = StateStore(Store(tmp_path / "pycri.db"), tmp_path / "root", tmp_path / "state")
    metrics = Metrics(state)
    first, second = pod(tmp_path, "a" * 64), pod(tmp_path, "b" * 64, attempt=1)
    for record in (first, second):
        await state.put_sandbox(record)
    await state.update_sandbox(second.id, not_ready)
    created = await state.put_container(container(first.id, "c" * 64))
    running = await state.put_container(dataclasses.replace(container(first.id, "d" * 64), name="other"))
    await state.update_container(running.id, lambda r: containers.started(r, 10))
    scraped = samples(metrics)
    assert scraped[("pycri_pods", (("state", "ready"),))] == 1
    assert scraped[("pycri_pods", (("state", "notready"),))] == 1
    by_state = {labels[0][1]: value for (name, labels), value in scraped.items() if name == "pycri_containers"}
    assert by_state == {"created": 1, "running": 1, "exited": 0, "unknown": 0}
    await state.update_container(created.id, lambda r: containers.exited(r, 0, 20))
    assert samples(metrics)[("pycri_containers", (("state", "exited"),))] == 1


def test_calls_pulls_recovery_and_sessions_are_counted() -> None:
    metrics = Metrics()
    service = "runtime.v1.RuntimeService"
    metrics.rpc_done(service, "RunPodSandbox", "OK", 0.2)
    metrics.rpc_done(service, "RunPodSandbox", "INVALID_ARGUMENT", 0.001)
    metrics.image_pull_done(3.0, "OK")
    metrics.image_pull_done(0.5, "NOT_FOUND")
    metrics.image_bytes_read(1000)
    metrics.image_bytes_read(24)
    metrics.recovery_done(1.5, {"runtime container": 2, "cgroup": 1})
    metrics.stream_session_opened("exec")
    metrics.stream_session_opened("exec")
    metrics.stream_session_closed("exec")
    scraped = samples(metrics)
    call = (("method", "RunPodSandbox"), ("service", service))
    assert scraped[("pycri_grpc_requests_total", (("code", "OK"), *call))] == 1
    assert scraped[("pycri_grpc_requests_total", (("code", "INVALID_ARGUMENT"), *call))] == 1
    assert scraped[("pycri_grpc_request_duration_seconds_count", call)] == 2
    assert scraped[("pycri_grpc_request_duration_seconds_bucket", (("le", "0.001"), *call))] == 1
    assert scraped[("pycri_image_pulls_total", ())] == 2
    assert scraped[("pycri_image_pull_failures_total", (("code", "NOT_FOUND"),))] == 1
    assert scraped[("pycri_image_pull_duration_seconds_count", ())] == 1
    assert scraped[("pycri_image_pull_duration_seconds_sum", ())] == 3.0
    assert scraped[("pycri_image_pull_bytes_total", ())] == 1024
    assert scraped[("pycri_recovery_duration_seconds", ())] == 1.5
    assert scraped[("pycri_recovery_orphans_removed", (("kind", "runtime_container"),))] == 2
    assert scraped[("pycri_recovery_orphans_removed", (("kind", "cgroup"),))] == 1
    assert scraped[("pycri_streaming_sessions", (("kind", "exec"),))] == 1
    assert scraped[("pycri_streaming_sessions", (("kind", "portforward"),))] == 0
    assert scraped[("process_open_fds", ())] > 0
    assert not [name for name, _ in scraped if name.endswith("_created")]


def test_openmetrics_is_served_to_who_asks_for_it() -> None:
    body, content_type = Metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


# ---- off ----

OFF_PROBE = """
import asyncio, importlib, pkgutil, sys
import grpc
import pycri
from pycri import telemetry
from pycri.server.dispatch import service_handler
from pycri.server.handlers import image_service_handlers, runtime_service_handlers

lazy = {"pycri.__main__", "pycri.telemetry.metrics", "pycri.telemetry.tracing"}
for module in pkgutil.walk_packages(pycri.__path__, "pycri."):
    if module.name not in lazy:
        importlib.import_module(module.name)
for handlers in (runtime_service_handlers(None), image_service_handlers(None)):
    assert isinstance(handlers, grpc.GenericRpcHandler)
call = type("Call", (), {"method": "/runtime.v1.RuntimeService/Version", "invocation_metadata": ()})()
wrapper = service_handler("RuntimeService", {}, None).service(call)
assert wrapper.unary_unary.__qualname__ == "_unary.<locals>.call", wrapper.unary_unary.__qualname__
with telemetry.span("step", {"a": 1}), telemetry.image_pull("busybox"), telemetry.stream_session("exec"):
    telemetry.image_bytes_read(10)
    telemetry.recovery_done(1.0, {"cgroup": 1})
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("prometheus_client", "opentelemetry"))
print(" ".join(loaded))
"""


def test_nothing_of_telemetry_is_imported_while_it_is_off() -> None:
    done = subprocess.run([sys.executable, "-c", OFF_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_off_hooks_hand_back_one_shared_no_op() -> None:
    from pycri import telemetry

    assert not telemetry.enabled()
    assert telemetry.span("a") is telemetry.span("b", {"x": 1}) is telemetry.image_pull("busybox")
    assert telemetry.stream_session("exec") is telemetry.span("c")
