"""crictl exec, attach and port-forward through pycri's streaming server (SPDY, crictl's default,
and WebSocket); and URLs that expire unused. The crictl tests skip when crictl is not installed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node, running_node
from tests.integration.test_streaming_support import HTTP_PORT, sleeping_container, spdy_upgrade, web_pod
from tests.support.crictl import CRICTL, crictl, needs_crictl
from tests.support.pods import (
    RPC_TIMEOUT,
    Workloads,
    container_config,
    shell,
    wait_until,
    workloads_on,
)

pytestmark = pytest.mark.integration

TRANSPORTS = ("spdy", "websocket")


@pytest.fixture(scope="module")
def work(node: Node) -> Iterator[Workloads]:
    with workloads_on(node) as workloads:
        yield workloads


@pytest.fixture(scope="module")
def box(work: Workloads, busybox: str) -> str:
    return sleeping_container(work, busybox)


def crictl_with_input(endpoint: str, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CRICTL is not None
    command = [CRICTL, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s", *args]
    return subprocess.run(command, input=text, capture_output=True, text=True, timeout=120)


@needs_crictl
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_streams_output_and_the_exit_code(node: Node, box: str, transport: str) -> None:
    endpoint = node.daemon.endpoint
    done = crictl(endpoint, "exec", "--transport", transport, box, "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    failed = crictl(endpoint, "exec", "--transport", transport, box, *shell("echo out; echo err >&2; exit 3"))
    assert failed.returncode != 0
    assert failed.stdout == "out\n"
    assert "err\n" in failed.stderr and "exit code 3" in failed.stderr


@needs_crictl
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_exec_interactive_passes_stdin(node: Node, box: str, transport: str) -> None:
    done = crictl_with_input(node.daemon.endpoint, "piped in\n", "exec", "-i", "--transport", transport, box, "cat")
    assert (done.returncode, done.stdout) == (0, "piped in\n"), done.stderr


@needs_crictl
def test_crictl_attach_relays_stdin_and_output(node: Node, work: Workloads, busybox: str) -> None:
    config = container_config("reader", busybox, *shell('read line; echo "got $line"'), stdin=True, stdin_once=True)
    container_id = work.run(work.pod("attach"), config)
    done = crictl_with_input(node.daemon.endpoint, "hello\n", "attach", "-i", container_id)
    assert (done.returncode, done.stdout) == (0, "got hello\n"), done.stderr


@needs_crictl
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crictl_port_forward_serves_the_pods_port(node: Node, work: Workloads, busybox: str, transport: str) -> None:
    pod = web_pod(work, busybox)
    assert CRICTL is not None
    command = [CRICTL, "--runtime-endpoint", node.daemon.endpoint, "port-forward", "--transport", transport, pod.id,
               f":{HTTP_PORT}"]  # fmt: skip
    forwarder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert forwarder.stdout is not None
        line = forwarder.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+", line)
        assert found, line
        local = f"http://127.0.0.1:{found.group(1)}/passwd"
        page = wait_until(lambda: fetch(local), "the pod's httpd through crictl port-forward")
        assert "root:x:0:0" in page
    finally:
        forwarder.terminate()
        try:
            forwarder.wait(10)
        except subprocess.TimeoutExpired:
            forwarder.kill()
            forwarder.wait()


def fetch(url: str) -> str:
    """The page, or "" while the server in the pod is not up yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read().decode()
    except OSError:
        return ""


# ---- expiry: a daemon of its own, whose URLs live a fifth of a second ----


@pytest.fixture
def quick_expiry_node() -> Iterator[Node]:
    with running_node({"streaming": {"token_ttl": 0.2}}) as running:
        yield running


def test_an_unused_url_expires(quick_expiry_node: Node) -> None:
    with workloads_on(quick_expiry_node) as work:
        request = api_pb2.PortForwardRequest(pod_sandbox_id=work.pod("expiry").id)
        fresh = work.runtime.PortForward(request, timeout=RPC_TIMEOUT).url
        assert asyncio.run(upgrade_status(fresh)) == 101
        stale = work.runtime.PortForward(request, timeout=RPC_TIMEOUT).url
        time.sleep(0.5)
        assert asyncio.run(upgrade_status(stale)) == 404


async def upgrade_status(url: str) -> int:
    answer = await spdy_upgrade(url, "portforward.k8s.io")
    answer.writer.close()
    return answer.status
