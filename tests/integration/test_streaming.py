"""Exec, Attach and PortForward through a real pycri: the RPCs' checks, their one-time URLs, and
sessions over SPDY/3.1 and WebSocket against real runc, conmon and pod network namespaces."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator

import grpc
import psutil
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node, rpc_error
from tests.integration.test_streaming_support import (
    CLOSED_PORT,
    HTTP_PORT,
    SpdyClient,
    WebSocketClient,
    attach_url,
    exec_url,
    exit_code,
    http_upgrade,
    port_forward_url,
    sleeping_container,
    spdy_command,
    spdy_upgrade,
    web_pod,
)
from tests.support.pods import (
    SLEEP_FOREVER,
    Pod,
    Workloads,
    container_config,
    shell,
    wait_until,
    workloads_on,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def work(node: Node) -> Iterator[Workloads]:
    with workloads_on(node) as workloads:
        yield workloads


@pytest.fixture(scope="module")
def box(work: Workloads, busybox: str) -> str:
    return sleeping_container(work, busybox)


@pytest.fixture(scope="module")
def web(work: Workloads, busybox: str) -> Pod:
    return web_pod(work, busybox)


# ---- the RPCs ----


def test_urls_point_at_the_local_streaming_server(work: Workloads, box: str, web: Pod) -> None:
    assert exec_url(work, box, "true").startswith("http://127.0.0.1:")
    assert "/exec/" in exec_url(work, box, "true")
    assert "/attach/" in attach_url(work, box, stdout=True)
    assert "/portforward/" in port_forward_url(work, web)


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"cmd": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"cmd": ["true"], "tty": True, "stderr": True}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"cmd": ["true"], "stdout": False}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_exec_requests_are_checked(work: Workloads, box: str, request_fields: dict[str, object], code: int) -> None:
    fields = {"stdout": True, **request_fields}
    error = rpc_error(work.runtime.Exec, api_pb2.ExecRequest(container_id=box, **fields))
    assert error.code() == code


def test_streams_need_a_running_container_or_a_ready_pod(work: Workloads, busybox: str) -> None:
    missing = "0" * 64
    assert rpc_error(work.runtime.Exec, api_pb2.ExecRequest(container_id=missing, cmd=["true"], stdout=True)).code() \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert rpc_error(work.runtime.Attach, api_pb2.AttachRequest(container_id=missing, stdout=True)).code() \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    pod = work.pod("stopped")
    container_id = work.create(pod, container_config("idle", busybox, *SLEEP_FOREVER))
    created = api_pb2.ExecRequest(container_id=container_id, cmd=["true"], stdout=True)
    assert rpc_error(work.runtime.Exec, created).code() == grpc.StatusCode.FAILED_PRECONDITION
    work.stop_pod(pod.id)
    not_ready = api_pb2.PortForwardRequest(pod_sandbox_id=pod.id)
    assert rpc_error(work.runtime.PortForward, not_ready).code() == grpc.StatusCode.FAILED_PRECONDITION
    gone = api_pb2.PortForwardRequest(pod_sandbox_id=missing)
    assert rpc_error(work.runtime.PortForward, gone).code() == grpc.StatusCode.NOT_FOUND


# ---- tokens ----


def test_a_url_works_once(work: Workloads, box: str) -> None:
    url = exec_url(work, box, "echo", "once")
    assert asyncio.run(spdy_command(url)).stdout == b"once\n"
    again = asyncio.run(spdy_upgrade(url, "v4.channel.k8s.io"))
    assert again.status == 404


def test_unknown_tokens_and_mismatched_kinds_are_not_found(work: Workloads, box: str) -> None:
    url = exec_url(work, box, "true")
    base, _, token = url.rpartition("/exec/")
    assert asyncio.run(spdy_upgrade(f"{base}/exec/not-a-token", "v4.channel.k8s.io")).status == 404
    assert asyncio.run(spdy_upgrade(f"{base}/attach/{token}", "v4.channel.k8s.io")).status == 404
    assert asyncio.run(spdy_upgrade(url, "v4.channel.k8s.io")).status == 404  # the mismatched try used it up


def test_a_request_that_is_no_upgrade_is_refused(work: Workloads, box: str) -> None:
    answer = asyncio.run(http_upgrade(exec_url(work, box, "true"), "GET", []))
    assert answer.status == 400
    assert b"upgrade" in answer.body


def test_unknown_stream_protocols_are_refused(work: Workloads, box: str) -> None:
    answer = asyncio.run(spdy_upgrade(exec_url(work, box, "true"), "v9.channel.k8s.io"))
    assert answer.status == 403
    assert "v4.channel.k8s.io" in answer.headers["x-accepted-stream-protocol-versions"]


# ---- exec over SPDY ----


def test_exec_reports_output_and_exit_code(work: Workloads, box: str) -> None:
    result = asyncio.run(spdy_command(exec_url(work, box, *shell("echo out; echo err >&2; exit 3"))))
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert isinstance(result.status, dict)
    assert exit_code(result.status) == 3
    assert "exit code 3" in result.status["message"]
    success = asyncio.run(spdy_command(exec_url(work, box, "true")))
    assert success.status == {"metadata": {}, "status": "Success"}


def test_exec_negotiates_v5_and_older_protocols(work: Workloads, box: str) -> None:
    v5 = asyncio.run(spdy_command(exec_url(work, box, *shell("exit 4")), protocol="v5.channel.k8s.io"))
    assert isinstance(v5.status, dict) and exit_code(v5.status) == 4
    v2 = asyncio.run(spdy_command(exec_url(work, box, *shell("echo two; exit 2")), protocol="v2.channel.k8s.io"))
    assert v2.stdout == b"two\n"
    assert isinstance(v2.status, str) and "exit code 2" in v2.status
    v2_success = asyncio.run(spdy_command(exec_url(work, box, "true"), protocol="v2.channel.k8s.io"))
    assert v2_success.status == ""


def test_exec_passes_stdin_and_its_end(work: Workloads, box: str) -> None:
    url = exec_url(work, box, *shell("cat; echo end"), stdin=True)
    result = asyncio.run(spdy_command(url, stdin=b"some input\nmore"))
    assert result.stdout == b"some input\nmoreend\n"


def test_exec_streams_large_output_whole(work: Workloads, box: str) -> None:
    url = exec_url(work, box, *shell("head -c 3000000 /dev/zero | tr '\\0' x"), stderr=False)
    result = asyncio.run(spdy_command(url, stderr=False))
    assert result.stdout == b"x" * 3_000_000


def test_exec_failure_of_the_runtime_is_an_internal_error(work: Workloads, box: str) -> None:
    result = asyncio.run(spdy_command(exec_url(work, box, "/no/such/binary")))
    assert isinstance(result.status, dict)
    assert result.status["reason"] == "InternalError"
    assert "/no/such/binary" in result.status["message"]


def test_exec_on_a_terminal_applies_resizes(work: Workloads, box: str) -> None:
    url = exec_url(work, box, "sh", stdin=True, tty=True, stderr=False)
    assert asyncio.run(terminal_size_after_resize(url, width=111, height=33)) == (0, b"33 111")


async def terminal_size_after_resize(url: str, width: int, height: int) -> tuple[int, bytes]:
    """Resize the terminal of an interactive sh, ask it for `stty size` until the new size shows
    (the resize reaches the container's pty on its own path), then exit; the exit code and the size line."""
    client = SpdyClient(await spdy_upgrade(url, "v4.channel.k8s.io"))
    try:
        error = await client.open(streamType="error")
        stdin = await client.open(streamType="stdin")
        stdout = await client.open(streamType="stdout")
        resize = await client.open(streamType="resize")
        client.write(resize, json.dumps({"Width": width, "Height": height}).encode())
        wanted, answer = f"{height} {width}".encode(), b""
        for attempt in range(200):
            before = len(client.streams[stdout].data)
            # The shell's echo of the typed line shows the sum unevaluated, so only the output matches.
            client.write(stdin, f"stty size; echo '<'$((0+{attempt}))'>'\n".encode())
            answer = (await client.read_until(stdout, f"<{attempt}>".encode()))[before:]
            if wanted in answer:
                break
        client.write(stdin, b"exit 0\n")
        status = json.loads(await client.read_all(error))
        return exit_code(status), wanted if wanted in answer else answer
    finally:
        await client.close()


def test_exec_is_killed_when_the_client_goes_away(work: Workloads, box: str) -> None:
    url = exec_url(work, box, "sleep", "1234")

    def sleeper() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "1234"]]

    async def start_and_leave() -> None:
        client = SpdyClient(await spdy_upgrade(url, "v4.channel.k8s.io"))
        for stream_type in ("error", "stdout", "stderr"):
            await client.open(streamType=stream_type)
        await asyncio.to_thread(wait_until, sleeper, "the exec'd sleep to run")
        await client.close()

    asyncio.run(start_and_leave())
    wait_until(lambda: not sleeper(), "the exec'd sleep to be killed")


# ---- exec over WebSocket ----


def test_exec_over_a_websocket(work: Workloads, box: str) -> None:
    async def run(url: str, protocol: str, stdin: bytes = b"") -> dict[int, bytes]:
        client = await WebSocketClient.connect(url, protocol)
        assert client.subprotocol == protocol
        if stdin:
            client.send(0, stdin)
            client.send(255, b"\x00")  # v5: stdin ends
        try:
            return await client.read_channels()
        finally:
            await client.close()

    channels = asyncio.run(run(exec_url(work, box, *shell("echo out; echo err >&2; exit 5")), "v5.channel.k8s.io"))
    assert (channels[1], channels[2]) == (b"out\n", b"err\n")
    assert exit_code(json.loads(channels[3])) == 5
    url = exec_url(work, box, *shell("cat; echo end"), stdin=True)
    assert asyncio.run(run(url, "v5.channel.k8s.io", stdin=b"typed "))[1] == b"typed end\n"
    base64_channels = asyncio.run(run(exec_url(work, box, *shell("echo b64; exit 1")), "base64.channel.k8s.io"))
    assert base64_channels[1] == b"b64\n"
    assert b"exit code 1" in base64_channels[3]


# ---- attach ----


def test_attach_relays_stdin_stdout_and_stderr(work: Workloads, busybox: str) -> None:
    script = shell('read line; echo "got $line"; echo oops >&2')
    config = container_config("reader", busybox, *script, stdin=True, stdin_once=True)
    container_id = work.run(work.pod("attach"), config)
    url = attach_url(work, container_id, stdin=True, stdout=True, stderr=True)
    result = asyncio.run(spdy_command(url, stdin=b"hello\n"))
    assert (result.stdout, result.stderr) == (b"got hello\n", b"oops\n")
    assert result.status == {"metadata": {}, "status": "Success"}


def test_attach_sees_output_and_leaves_the_container_running(work: Workloads, busybox: str) -> None:
    config = container_config("ticker", busybox, *shell("while true; do echo tick; sleep 0.1; done"))
    container_id = work.run(work.pod("ticker"), config)

    async def watch(url: str) -> bytes:
        client = SpdyClient(await spdy_upgrade(url, "v4.channel.k8s.io"))
        try:
            await client.open(streamType="error")
            stdout = await client.open(streamType="stdout")
            return await client.read_until(stdout, b"tick\ntick\n")
        finally:
            await client.close()

    assert b"tick" in asyncio.run(watch(attach_url(work, container_id, stdout=True)))
    assert work.status(container_id).state == api_pb2.ContainerState.CONTAINER_RUNNING


def test_attach_to_a_terminal_applies_resizes(work: Workloads, busybox: str) -> None:
    config = container_config("term", busybox, "sh", stdin=True, tty=True)
    container_id = work.run(work.pod("term"), config)
    url = attach_url(work, container_id, stdin=True, stdout=True, tty=True)
    assert asyncio.run(terminal_size_after_resize(url, width=101, height=41)) == (0, b"41 101")


# ---- port forwarding ----


def wait_for_http(work: Workloads, pod: Pod) -> None:
    """Until the pod's server answers through a port-forward (it may still be starting)."""
    wait_until(lambda: b"root:" in asyncio.run(spdy_get(port_forward_url(work, pod), [HTTP_PORT])), "httpd in the pod")


async def spdy_get(url: str, ports: list[int], path: str = "/passwd") -> bytes:
    """One HTTP/1.0 GET per port over one port-forward connection; the answers (or error messages) joined."""
    client = SpdyClient(await spdy_upgrade(url, "portforward.k8s.io"))
    assert client.protocol == "portforward.k8s.io"
    try:
        answers = []
        for request_id, port in enumerate(ports):
            error = await client.open(streamType="error", port=str(port), requestID=str(request_id))
            data = await client.open(streamType="data", port=str(port), requestID=str(request_id))
            client.write(data, f"GET {path} HTTP/1.0\r\n\r\n".encode(), fin=True)
            answers.append(await client.read_all(data) + await client.read_all(error))
        return b"".join(answers)
    finally:
        await client.close()


def test_port_forward_reaches_the_pods_localhost(work: Workloads, web: Pod) -> None:
    wait_for_http(work, web)
    answers = asyncio.run(spdy_get(port_forward_url(work, web), [HTTP_PORT, HTTP_PORT]))
    assert answers.count(b"root:x:0:0") == 2


def test_port_forward_to_a_closed_port_reports_on_the_error_stream(work: Workloads, web: Pod) -> None:
    answer = asyncio.run(spdy_get(port_forward_url(work, web), [CLOSED_PORT]))
    error = json.loads(answer)
    assert error["closeConnection"] is True
    assert f"port {CLOSED_PORT}" in error["message"] and "refused" in error["message"]


def test_port_forward_over_websocket_channels(work: Workloads, web: Pod) -> None:
    wait_for_http(work, web)

    async def fetch(url: str) -> tuple[dict[int, bytes], bytes]:
        client = await WebSocketClient.connect(url, "v4.channel.k8s.io")
        try:
            first = {}
            while len(first) < 2:
                channel, data = await client.receive() or (-1, b"")
                first[channel] = data
            client.send(0, b"GET /passwd HTTP/1.0\r\n\r\n")
            body = b""
            while b"root:x:0:0" not in body:
                channel, data = await asyncio.wait_for(client.receive(), 30) or (-1, b"")
                assert channel == 0, (channel, data)
                body += data
            return first, body
        finally:
            await client.close()

    first, body = asyncio.run(fetch(port_forward_url(work, web, HTTP_PORT)))
    assert first == {0: struct.pack("<H", HTTP_PORT), 1: struct.pack("<H", HTTP_PORT)}
    assert b"200 OK" in body
