"""NRI's wire framing: ttrpc messages and the two-channel multiplexer, split and joined any way."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.nri import mux, ttrpc
from pycri.nri.pb import ttrpc_pb2

pytestmark = pytest.mark.unit

messages = st.builds(
    ttrpc.Message,
    stream_id=st.integers(0, ttrpc.MAX_STREAM_ID),
    type=st.sampled_from(list(ttrpc.MessageType)),
    flags=st.integers(0, 255),
    data=st.binary(max_size=3000),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def test_header_layout_is_ttrpcs() -> None:
    encoded = ttrpc.encode_message(ttrpc.Message(7, ttrpc.MessageType.RESPONSE, 0x4, b"abc"))
    assert encoded == bytes([0, 0, 0, 3, 0, 0, 0, 7, 2, 4]) + b"abc"


@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_messages_round_trip_however_split(sent: list[ttrpc.Message], cuts: list[int]) -> None:
    wire = b"".join(ttrpc.encode_message(m) for m in sent)
    decoder = ttrpc.MessageDecoder()
    received = [m for piece in _split(wire, cuts) for m in decoder.feed(piece)]
    assert received == sent
    assert decoder.pending == 0


def test_partial_message_waits_for_the_rest() -> None:
    wire = ttrpc.encode_message(ttrpc.Message(1, ttrpc.MessageType.REQUEST, 0, b"x" * 100))
    decoder = ttrpc.MessageDecoder()
    assert decoder.feed(wire[:5]) == []
    assert decoder.feed(wire[5:50]) == []
    assert decoder.pending == 50
    assert decoder.feed(wire[50:]) == [ttrpc.Message(1, ttrpc.MessageType.REQUEST, 0, b"x" * 100)]


def test_oversized_message_is_refused_from_its_header() -> None:
    header = struct.pack(">IIBB", ttrpc.MAX_DATA_LENGTH + 1, 1, 1, 0)
    with pytest.raises(ttrpc.TtrpcError, match="over"):
        ttrpc.MessageDecoder().feed(header)
    with pytest.raises(ttrpc.TtrpcError):
        ttrpc.encode_message(ttrpc.Message(1, 1, 0, b"\0" * (ttrpc.MAX_DATA_LENGTH + 1)))


def test_stream_ids_are_odd_and_rising() -> None:
    ids = ttrpc.StreamIds()
    assert [ids.take() for _ in range(4)] == [1, 3, 5, 7]


def test_request_and_response_envelopes() -> None:
    message = ttrpc.request(5, "nri.pkg.api.v1alpha1.Plugin", "Configure", b"\x08\x01", timeout_ns=2_000_000_000)
    parsed = ttrpc.parse_request(message)
    assert (parsed.service, parsed.method, parsed.payload, parsed.timeout_nano) == (
        "nri.pkg.api.v1alpha1.Plugin",
        "Configure",
        b"\x08\x01",
        2_000_000_000,
    )
    assert ttrpc.response_payload(ttrpc.response(5, b"result")) == b"result"
    with pytest.raises(ttrpc.CallFailed) as failed:
        ttrpc.response_payload(ttrpc.response(5, code=ttrpc.Code.UNIMPLEMENTED, text="no such method"))
    assert failed.value.code == ttrpc.Code.UNIMPLEMENTED
    assert "UNIMPLEMENTED: no such method" in str(failed.value)


def test_status_has_google_rpc_status_field_numbers() -> None:
    # A Go peer decodes Response.status as google.rpc.Status: code = 1 (int32), message = 2 (string).
    data = ttrpc.response(1, code=ttrpc.Code.INTERNAL, text="boom").data
    assert data == bytes([0x0A, 8, 0x08, 13, 0x12, 4]) + b"boom"


def test_junk_and_even_stream_requests_are_refused() -> None:
    with pytest.raises(ttrpc.TtrpcError, match="undecodable"):
        ttrpc.parse_request(ttrpc.Message(1, ttrpc.MessageType.REQUEST, 0, b"\xff\xff\xff"))
    with pytest.raises(ttrpc.TtrpcError, match="even"):
        ttrpc.parse_request(ttrpc.Message(2, ttrpc.MessageType.REQUEST, 0, b""))
    with pytest.raises(ttrpc.TtrpcError, match="undecodable"):
        ttrpc.response_payload(ttrpc.Message(1, ttrpc.MessageType.RESPONSE, 0, b"\x0a\xff"))


@given(st.binary(max_size=4000))
def test_any_bytes_decode_or_raise_ttrpc_error(junk: bytes) -> None:
    with contextlib.suppress(ttrpc.TtrpcError):
        ttrpc.parse_request(ttrpc.Message(1, ttrpc.MessageType.REQUEST, 0, junk))


def test_mux_frame_layout() -> None:
    assert mux.encode(2, b"hello") == bytes([0, 0, 0, 2, 0, 0, 0, 5]) + b"hello"
    assert mux.encode(1, b"") == b""
    with pytest.raises(mux.MuxError):
        mux.encode(0, b"x")


def test_mux_splits_writes_into_small_frames() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    frames = mux.FrameDecoder().feed(mux.encode(1, data))
    assert [len(payload) for _, payload in frames] == [4096, 4096, 2048]
    assert b"".join(payload for _, payload in frames) == data


@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 9]), st.binary(max_size=9000)), max_size=5),
    st.lists(st.integers(0, 1 << 16), max_size=8),
    st.integers(1, 5000),
)
def test_mux_round_trips_per_channel_however_split(
    writes: list[tuple[int, bytes]], cuts: list[int], chunk: int
) -> None:
    wire = b"".join(mux.encode(channel, data, chunk) for channel, data in writes)
    decoder = mux.FrameDecoder()
    got: dict[int, bytes] = {}
    for piece in _split(wire, cuts):
        for channel, payload in decoder.feed(piece):
            assert len(payload) <= chunk
            got[channel] = got.get(channel, b"") + payload
    want: dict[int, bytes] = {}
    for channel, data in writes:
        if data:
            want[channel] = want.get(channel, b"") + data
    assert got == want
    assert decoder.pending == 0


def test_mux_refuses_an_oversized_frame() -> None:
    with pytest.raises(mux.MuxError, match="over"):
        mux.FrameDecoder().feed(struct.pack(">II", 1, mux.MAX_FRAME_PAYLOAD + 1))


def test_ttrpc_through_the_mux_split_at_every_byte() -> None:
    call = ttrpc.request(3, "nri.pkg.api.v1alpha1.Runtime", "RegisterPlugin", b"\x0a\x04test\x12\x0210")
    wire = mux.encode(mux.RUNTIME_SERVICE_CHANNEL, ttrpc.encode_message(call), chunk=7)
    frames, channel_bytes = mux.FrameDecoder(), ttrpc.MessageDecoder()
    out: list[ttrpc.Message] = []
    for i in range(len(wire)):
        for channel, payload in frames.feed(wire[i : i + 1]):
            assert channel == mux.RUNTIME_SERVICE_CHANNEL
            out += channel_bytes.feed(payload)
    assert out == [call]
    assert isinstance(ttrpc.parse_request(out[0]), ttrpc_pb2.Request)
