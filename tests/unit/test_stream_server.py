"""Pieces of the streaming server that need no daemon: one-time tokens, request heads, the
remotecommand status and resize formats, and the WebSocket frame codec."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.errors import ResourceExhausted
from pycri.stream.remotecommand import Outcome, ResizeDecoder, TerminalSize, status_document, status_payload
from pycri.stream.server import BadRequest, parse_request_head
from pycri.stream.tokens import MAX_PENDING_TOKENS, TokenCache
from pycri.stream.websocket import FrameParser, Opcode, WebSocketError, WsFrame, accept_key, encode_frame

pytestmark = pytest.mark.unit

MASK = b"\x01\x02\x03\x04"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_works_once() -> None:
    tokens: TokenCache[str] = TokenCache(ttl=60, clock=FakeClock())
    token = tokens.insert("request")
    assert tokens.consume(token) == "request"
    assert tokens.consume(token) is None
    assert tokens.consume("never-issued") is None


def test_a_token_expires() -> None:
    clock = FakeClock()
    tokens: TokenCache[str] = TokenCache(ttl=60, clock=clock)
    token = tokens.insert("request")
    clock.now += 60
    assert tokens.consume(token) is None


def test_tokens_are_random_and_bounded() -> None:
    clock = FakeClock()
    tokens: TokenCache[int] = TokenCache(ttl=60, clock=clock)
    issued = {tokens.insert(n) for n in range(MAX_PENDING_TOKENS)}
    assert len(issued) == MAX_PENDING_TOKENS
    with pytest.raises(ResourceExhausted):
        tokens.insert(-1)
    clock.now += 61  # expired ones make room
    assert tokens.insert(-1)


def test_request_heads_are_parsed() -> None:
    head = (
        b"POST /exec/abc?port=80&port=81 HTTP/1.1\r\nHost: x\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"x-stream-protocol-version: v3.channel.k8s.io, v2.channel.k8s.io\r\nConnection: Upgrade\r\n\r\n"
    )
    request = parse_request_head(head)
    assert (request.method, request.path, request.query) == ("POST", "/exec/abc", {"port": ["80", "81"]})
    assert request.header("connection") == "Upgrade"
    assert request.header_tokens("X-Stream-Protocol-Version") == [
        "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io"
    ]  # fmt: skip


@pytest.mark.parametrize("head", [b"GARBAGE\r\n\r\n", b"GET / SPDY/3\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"])
def test_bad_request_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(head)


def test_status_documents_are_kubelets() -> None:
    assert status_document(Outcome()) == {"metadata": {}, "status": "Success"}
    failed = status_document(Outcome(exit_code=3, command=("sh", "-c", "exit 3")))
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert failed["message"] == (
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    )
    broken = status_document(Outcome(error="no such binary"))
    assert (broken["reason"], broken["code"]) == ("InternalError", 500)


def test_status_payloads_follow_the_protocol_version() -> None:
    assert json.loads(status_payload(Outcome(exit_code=2), "v4.channel.k8s.io"))["status"] == "Failure"
    assert json.loads(status_payload(Outcome(), "v5.channel.k8s.io")) == {"metadata": {}, "status": "Success"}
    assert status_payload(Outcome(), "v3.channel.k8s.io") == b""
    assert b"exit code 2" in status_payload(Outcome(exit_code=2), "v2.channel.k8s.io")


def test_resizes_are_json_objects_in_any_pieces() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":80,"Height":2') == []
    assert decoder.feed(b'4}\n{"width": 100, "height": 30}\n') == [TerminalSize(80, 24), TerminalSize(100, 30)]
    assert decoder.feed(b'{"Width":-1,"Height":5}{"Width":"x"} [1] {"Width":1,"Height":2}') == [TerminalSize(1, 2)]


@given(st.binary(max_size=600))
def test_resize_garbage_never_raises(garbage: bytes) -> None:
    ResizeDecoder().feed(garbage)


def test_deeply_nested_resize_garbage_is_dropped() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b"[" * 5000) == []
    assert decoder.feed(b'{"Width":7,"Height":8}') == [TerminalSize(7, 8)]


def test_websocket_accept_key_is_rfc6455s() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
def test_masked_frames_of_every_length_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    wire = encode_frame(Opcode.BINARY, payload, mask=MASK)
    parser = FrameParser()
    assert parser.feed(wire[:3]) == []
    assert parser.feed(wire[3:]) == [WsFrame(True, Opcode.BINARY, payload)]


def test_server_frames_are_unmasked() -> None:
    assert encode_frame(Opcode.TEXT, b"hi") == b"\x81\x02hi"


@pytest.mark.parametrize(
    "wire",
    [
        encode_frame(Opcode.BINARY, b"unmasked"),
        b"\xc2\x80" + MASK,  # RSV1 set
        b"\x83\x80" + MASK,  # opcode 3
        encode_frame(Opcode.PING, b"x", fin=False, mask=MASK),
        encode_frame(Opcode.CLOSE, b"x" * 126, mask=MASK),
    ],
)
def test_bad_client_frames_are_refused(wire: bytes) -> None:
    with pytest.raises(WebSocketError):
        FrameParser().feed(wire)


def test_frames_over_the_limit_are_refused_before_they_arrive() -> None:
    with pytest.raises(WebSocketError) as refused:
        FrameParser(max_payload=1000).feed(b"\x82\xfe\x10\x00")
    assert refused.value.code == 1009


@given(st.binary(max_size=400))
def test_websocket_garbage_gives_frames_or_a_websocket_error(garbage: bytes) -> None:
    with contextlib.suppress(WebSocketError):
        FrameParser().feed(garbage)
