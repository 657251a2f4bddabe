"""NRI's connection multiplexer: two ttrpc channels over one socket.

An NRI plugin and the runtime share one stream socket, and each serves the other: the
plugin serves the Plugin service on channel 1, the runtime serves the Runtime service
on channel 2. Every frame on the socket is an 8-byte header (a 4-byte big-endian
channel id, a 4-byte payload length) and the payload: a piece of that channel's byte
stream. Channels are not opened or closed on the wire; both ends know the two ids.

This module is pure: bytes in, (channel, bytes) out, and back.
"""

from __future__ import annotations

import struct

from pycri.nri import ttrpc

HEADER_LENGTH = 8
PLUGIN_SERVICE_CHANNEL = 1
RUNTIME_SERVICE_CHANNEL = 2
# What a peer may send in one frame: NRI's own limit, one whole ttrpc message.
MAX_FRAME_PAYLOAD = ttrpc.HEADER_LENGTH + ttrpc.MAX_DATA_LENGTH
# What pycri puts in one frame. NRI's Go plugins read each frame into a 4 KiB buffer
# (bufio's default, under ttrpc) and fail a read of a bigger frame, so bigger writes are
# split; the receiving channel joins the pieces back into one byte stream.
SEND_CHUNK = 4096
_HEADER = struct.Struct(">II")


class MuxError(ValueError):
    """The peer broke the framing; the connection cannot go on."""


def encode(channel: int, data: bytes, chunk: int = SEND_CHUNK) -> bytes:
    """The frames carrying data on channel, at most chunk bytes of payload each."""
    if channel == 0:
        raise MuxError("channel 0 is reserved")
    frames = bytearray()
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        frames += _HEADER.pack(channel, len(piece))
        frames += piece
    return bytes(frames)


class FrameDecoder:
    """Socket bytes in, (channel, payload) pairs out, however the bytes were split."""

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER_LENGTH:
            channel, length = _HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise MuxError(f"peer sent a frame of {length} bytes, over the {self._max} allowed")
            end = HEADER_LENGTH + length
            if len(self._buffer) < end:
                break
            frames.append((channel, bytes(self._buffer[HEADER_LENGTH:end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back until the rest of their frame arrives."""
        return len(self._buffer)
