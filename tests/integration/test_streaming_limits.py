"""The streaming server's bounds against a real pycri: SPDY streams past the cap are refused,
a WebSocket message past the cap closes with 1009, an idle session is dropped and its process
killed, ExecSync output past the CRI message limit is cut (not refused), and with a certificate
the server speaks only HTTPS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import psutil
import pytest

from pycri.api import api_pb2, api_pb2_grpc
from pycri.oci.runtime import EXEC_OUTPUT_LIMIT
from pycri.stream.websocket import Opcode, encode_frame
from tests.integration.test_sandbox_support import running_node
from tests.integration.test_streaming_support import (
    WAIT_SECONDS,
    SpdyClient,
    exec_url,
    http_upgrade,
    port_forward_url,
    sleeping_container,
    spdy_upgrade,
)
from tests.support.busybox_images import TestImages
from tests.support.pods import RPC_TIMEOUT, Workloads, wait_until, workloads_on

pytestmark = pytest.mark.integration

MAX_STREAMS = 4
MAX_MESSAGE = 64 * 1024
IDLE_SECONDS = 1.0
CRI_MESSAGE_LIMIT = 16 * 1024 * 1024
LIMITS = {"spdy_max_streams": MAX_STREAMS, "websocket_max_message_bytes": MAX_MESSAGE, "idle_timeout": IDLE_SECONDS}


@contextlib.contextmanager
def node_streaming(test_images: TestImages, streaming: dict[str, Any]) -> Iterator[Workloads]:
    """Pods on a pycri of their own whose [streaming] section is `streaming`."""
    settings = {"runtime": {"pause_image": test_images.pause.reference}, "streaming": streaming}
    with running_node(settings) as node, workloads_on(node) as workloads:
        for image in (test_images.busybox, test_images.pause):
            workloads.pull(image.reference)
        yield workloads


@pytest.fixture(scope="module")
def work(test_images: TestImages) -> Iterator[Workloads]:
    with node_streaming(test_images, LIMITS) as workloads:
        yield workloads


@pytest.fixture(scope="module")
def box(work: Workloads, busybox: str) -> str:
    return sleeping_container(work, busybox)


def test_spdy_streams_past_the_cap_are_refused(work: Workloads) -> None:
    async def open_streams(url: str) -> list[bool]:
        client = SpdyClient(await spdy_upgrade(url, "portforward.k8s.io"))
        try:
            # Error streams whose data streams never come: each holds its place until it expires.
            ids = [await client.open(streamType="error", port="80", requestID=str(n)) for n in range(MAX_STREAMS + 2)]
            return [client.streams[stream_id].reset for stream_id in ids]
        finally:
            await client.close()

    url = port_forward_url(work, work.pod("stream-cap"), 80)
    assert asyncio.run(open_streams(url)) == [False] * MAX_STREAMS + [True, True]


async def websocket_exec(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
    headers += [("Sec-WebSocket-Key", key), ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")]
    upgrade = await http_upgrade(url, "GET", headers)
    assert upgrade.status == 101, upgrade.body
    return upgrade.reader, upgrade.writer


def send_fragmented(writer: asyncio.StreamWriter, message: bytes, fragment: int = 1000) -> None:
    pieces = [message[start : start + fragment] for start in range(0, len(message), fragment)]
    for index, piece in enumerate(pieces):
        opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
        writer.write(encode_frame(opcode, piece, fin=index == len(pieces) - 1, mask=os.urandom(4)))


async def server_messages(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Every frame the server sends until it closes: (opcode, payload)."""
    frames = []
    while True:
        head = await asyncio.wait_for(reader.readexactly(2), WAIT_SECONDS)
        size = head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack(">H", await reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack(">Q", await reader.readexactly(8))
        frames.append((head[0] & 0x0F, await reader.readexactly(size)))
        if frames[-1][0] == Opcode.CLOSE:
            return frames


def test_a_websocket_message_of_the_caps_size_passes_and_one_byte_more_closes_with_1009(
    work: Workloads, box: str
) -> None:
    async def count_stdin(size: int) -> list[tuple[int, bytes]]:
        reader, writer = await websocket_exec(exec_url(work, box, "wc", "-c", stdin=True, stderr=False))
        send_fragmented(writer, b"\x00" + b"x" * (size - 1))  # channel 0 (stdin), then data
        writer.write(encode_frame(Opcode.BINARY, b"\xff\x00", mask=os.urandom(4)))  # v5: stdin closed
        try:
            return await server_messages(reader)
        finally:
            writer.close()

    whole = asyncio.run(count_stdin(MAX_MESSAGE))
    stdout = b"".join(payload[1:] for opcode, payload in whole if opcode == Opcode.BINARY and payload[:1] == b"\x01")
    assert stdout.strip() == str(MAX_MESSAGE - 1).encode()
    too_big = asyncio.run(count_stdin(MAX_MESSAGE + 1))
    assert too_big[-1] == (Opcode.CLOSE, struct.pack(">H", 1009))


def test_an_idle_session_is_dropped_and_its_process_killed(work: Workloads, box: str) -> None:
    url = exec_url(work, box, "sleep", "4321")

    def sleeper() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "4321"]]

    async def start_and_idle() -> None:
        client = SpdyClient(await spdy_upgrade(url, "v4.channel.k8s.io"))
        for stream_type in ("error", "stdout", "stderr"):
            await client.open(streamType=stream_type)
        await asyncio.to_thread(wait_until, sleeper, "the exec'd sleep to run")
        await asyncio.wait_for(client.closed.wait(), WAIT_SECONDS)  # the server hung up
        await client.close()

    asyncio.run(start_and_idle())
    wait_until(lambda: not sleeper(), "the idle session's sleep to be killed")


def peak_memory_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_client_that_sends_without_reading_does_not_grow_the_daemon(work: Workloads, box: str) -> None:
    daemon = work.node.daemon.proc
    assert daemon is not None
    sent = 96 * 1024 * 1024
    url = exec_url(work, box, "sleep", "60", stdin=True)  # never reads its stdin

    async def flood() -> None:
        client = SpdyClient(await spdy_upgrade(url, "v4.channel.k8s.io"))
        try:
            error = await client.open(streamType="error")
            stdin = await client.open(streamType="stdin")
            for stream_type in ("stdout", "stderr"):
                await client.open(streamType=stream_type)
            chunk = bytes(32 * 1024)
            for _ in range(sent // len(chunk)):
                client.write(stdin, chunk)
            # Once pycri stops reading, nothing moves and the idle timeout ends the session.
            await client.read_all(error)
        finally:
            await client.close()

    Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # the peak starts again from now
    before = peak_memory_kib(daemon.pid)
    asyncio.run(flood())
    grown = peak_memory_kib(daemon.pid) - before
    assert grown < 32 * 1024, f"pycri's peak memory grew by {grown} KiB while a client sent {sent >> 20} MiB unread"


def test_exec_sync_output_past_the_cri_limit_is_truncated(work: Workloads, box: str) -> None:
    options = [("grpc.max_receive_message_length", CRI_MESSAGE_LIMIT)]  # as kubelet's client
    with grpc.insecure_channel(work.node.daemon.endpoint, options=options) as channel:
        runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        command = ["sh", "-c", "head -c 20000000 /dev/zero; head -c 100 /dev/zero >&2; exit 3"]
        reply = runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=box, cmd=command), timeout=RPC_TIMEOUT)
    assert (len(reply.stdout), len(reply.stderr), reply.exit_code) == (EXEC_OUTPUT_LIMIT - 100, 100, 3)
    assert reply.stdout == bytes(len(reply.stdout))


# ---- TLS: a daemon of its own, with a self-signed certificate made here ----


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "stream.crt", directory / "stream.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_work(test_images: TestImages, tls_files: tuple[Path, Path]) -> Iterator[Workloads]:
    cert, key = tls_files
    with node_streaming(test_images, {"tls_cert_file": str(cert), "tls_key_file": str(key)}) as workloads:
        yield workloads


async def tls_upgrade_status(url: str, cert: Path) -> int:
    target = urlsplit(url)
    context = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(target.hostname, target.port, ssl=context)
    head = f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    writer.write((head + "X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n").encode())
    status_line = await asyncio.wait_for(reader.readline(), WAIT_SECONDS)
    writer.close()
    return int(status_line.split(b" ")[1])


def test_with_a_certificate_the_server_speaks_https_only(tls_work: Workloads, tls_files: tuple[Path, Path]) -> None:
    pod = tls_work.pod("tls")
    url = port_forward_url(tls_work, pod, 80)
    assert url.startswith("https://127.0.0.1:")
    assert asyncio.run(tls_upgrade_status(url, tls_files[0])) == 101

    async def plain_http(url: str) -> bytes:
        target = urlsplit(url)
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        writer.write(f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), WAIT_SECONDS)
        writer.close()
        return answer

    assert not asyncio.run(plain_http(port_forward_url(tls_work, pod, 80))).startswith(b"HTTP/")
