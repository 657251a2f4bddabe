"""The SPDY/3.1 frame codec: round trips, header compression with the SPDY dictionary, bad input."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.stream.spdy import (
    HEADER_DICTIONARY,
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    HeaderCompressor,
    HeaderDecompressor,
    HeadersFrame,
    Ping,
    RstStream,
    Settings,
    SpdyError,
    SynReply,
    SynStream,
    WindowUpdate,
    decode_header_block,
    encode_header_block,
)

pytestmark = pytest.mark.unit

# The dictionary id a zlib stream primed with the SPDY/3 dictionary carries (the spec's value).
SPDY3_DICTIONARY_ADLER32 = 0xE3C6A7C2

FRAMES: list[Frame] = [
    DataFrame(1, b"hello"),
    DataFrame(3, b"", fin=True),
    SynStream(1, {"streamtype": ["error"]}),
    SynStream(5, {"streamtype": ["data"], "port": ["80"], "requestid": ["0"]}, fin=True, priority=7),
    SynStream(7, {"x": ["a", "b", ""]}, unidirectional=True, associated_to=3),
    SynReply(1, {}),
    SynReply(9, {"status": ["200"]}, fin=True),
    HeadersFrame(11, {"a": ["1"]}),
    RstStream(3, 5),
    Settings(((0, 4, 100), (1, 7, 65536))),
    Settings(),
    Ping(1),
    GoAway(9, 0),
    WindowUpdate(1, 65536),
]


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert zlib.adler32(HEADER_DICTIONARY) == SPDY3_DICTIONARY_ADLER32


def test_frames_round_trip_on_one_connection() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    wire = b"".join(encoder.encode(frame) for frame in FRAMES)
    assert decoder.feed(wire) == FRAMES


def encode_all(frames: list[Frame]) -> bytes:
    encoder = FrameEncoder()
    return b"".join(encoder.encode(frame) for frame in frames)


def test_frames_arrive_in_any_pieces() -> None:
    wire = encode_all(FRAMES)
    decoder = FrameDecoder()
    frames = [frame for byte in range(len(wire)) for frame in decoder.feed(wire[byte : byte + 1])]
    assert frames == FRAMES


def test_data_frame_layout() -> None:
    assert FrameEncoder().encode(DataFrame(5, b"ab", fin=True)) == bytes.fromhex("00000005 01000002") + b"ab"


def test_control_frame_layout() -> None:
    assert FrameEncoder().encode(Ping(7)) == bytes.fromhex("80030006 00000004 00000007")
    assert FrameEncoder().encode(RstStream(3, 5)) == bytes.fromhex("80030003 00000008 00000003 00000005")


def test_header_block_layout() -> None:
    block = encode_header_block({"StreamType": ["stdout"], "v": ["1", "2"]})
    assert block == (
        struct.pack(">I", 2)
        + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 6) + b"stdout"
        + struct.pack(">I", 1) + b"v" + struct.pack(">I", 3) + b"1\x002"
    )  # fmt: skip
    assert decode_header_block(block) == {"streamtype": ["stdout"], "v": ["1", "2"]}


def test_header_blocks_use_the_dictionary_and_one_context() -> None:
    compressor = HeaderCompressor()
    first = compressor.compress({"streamtype": ["stdin"]})
    # zlib header with FDICT set, then the dictionary's adler32
    assert first[1] & 0x20
    assert struct.unpack(">I", first[2:6])[0] == SPDY3_DICTIONARY_ADLER32
    second = compressor.compress({"streamtype": ["stdin"]})
    assert len(second) < len(first)  # the second block refers back to the first
    decompressor = HeaderDecompressor()
    assert decompressor.decompress(first) == {"streamtype": ["stdin"]}
    assert decompressor.decompress(second) == {"streamtype": ["stdin"]}


def test_blocks_from_a_plain_zlib_with_the_dictionary_decode() -> None:
    zlib_stream = zlib.compressobj(zdict=HEADER_DICTIONARY)
    data = zlib_stream.compress(encode_header_block({"port": ["8080"]})) + zlib_stream.flush(zlib.Z_SYNC_FLUSH)
    assert HeaderDecompressor().decompress(data) == {"port": ["8080"]}


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes.fromhex("80020001 00000000"), "version 2"),
        (bytes.fromhex("00000000 00000000"), "stream 0"),
        (bytes.fromhex("80030001 00000003 000000"), "too short"),
        (bytes.fromhex("80030006 00000005 0000000100"), "expected 4"),
        (bytes.fromhex("80030002 00000008 00000001 deadbeef"), "does not inflate"),
        (bytes.fromhex("80030004 00000004 00000002"), "does not hold 2"),
    ],
)
def test_bad_frames_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(SpdyError, match=message):
        FrameDecoder().feed(wire)


def test_frames_over_the_limit_are_refused_before_they_arrive() -> None:
    with pytest.raises(SpdyError, match="limit"):
        FrameDecoder(max_frame_length=1024).feed(bytes.fromhex("00000001 00100000"))


def test_unknown_control_types_are_skipped() -> None:
    wire = bytes.fromhex("8003000a 00000002 abcd") + FrameEncoder().encode(Ping(3))
    assert FrameDecoder().feed(wire) == [Ping(3)]


def test_upper_case_and_duplicate_header_names_are_refused() -> None:
    with pytest.raises(SpdyError, match="lower case"):
        decode_header_block(struct.pack(">II", 1, 1) + b"A" + struct.pack(">I", 0))
    twice = struct.pack(">II", 2, 1) + b"a" + struct.pack(">I", 0) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 0)
    with pytest.raises(SpdyError, match="twice"):
        decode_header_block(twice)


header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
header_values = st.lists(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=30), min_size=1)
stream_ids = st.integers(min_value=1, max_value=2**31 - 1)
any_frame = st.one_of(
    st.builds(DataFrame, stream_ids, st.binary(max_size=300), st.booleans()),
    st.builds(SynStream, stream_ids, st.dictionaries(header_names, header_values, max_size=5), st.booleans()),
    st.builds(SynReply, stream_ids, st.dictionaries(header_names, header_values, max_size=5), st.booleans()),
    st.builds(RstStream, stream_ids, st.integers(min_value=1, max_value=2**32 - 1)),
    st.builds(Ping, st.integers(min_value=0, max_value=2**32 - 1)),
    st.builds(GoAway, st.integers(min_value=0, max_value=2**31 - 1), st.integers(min_value=0, max_value=2**32 - 1)),
    st.builds(WindowUpdate, stream_ids, st.integers(min_value=0, max_value=2**31 - 1)),
)


@given(st.lists(any_frame, max_size=12))
def test_any_frames_round_trip(frames: list[Frame]) -> None:
    assert FrameDecoder().feed(encode_all(frames)) == frames


@given(st.binary(max_size=2000))
def test_garbage_gives_frames_or_a_spdy_error(garbage: bytes) -> None:
    with contextlib.suppress(SpdyError):
        FrameDecoder().feed(garbage)


@given(st.lists(any_frame, min_size=1, max_size=5), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_flipped_bytes_give_frames_or_a_spdy_error(frames: list[Frame], where: int, value: int) -> None:
    wire = bytearray(encode_all(frames))
    wire[where % len(wire)] = value
    with contextlib.suppress(SpdyError):
        FrameDecoder().feed(bytes(wire))
