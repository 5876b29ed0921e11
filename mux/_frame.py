"""Frame header encoding. Bodies are never copied here: callers pass slices alongside."""

from __future__ import annotations

from typing import NamedTuple

from mux._const import HEADER, PROTOCOL_VERSION, Flag, FrameType

_pack = HEADER.pack


class FrameHeader(NamedTuple):
    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def encode_header(type: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of one frame."""
    return _pack(PROTOCOL_VERSION, type, flags, stream_id, length)


def decode_header(data: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Parse 12 bytes at `offset`. No validation: that is the connection's job."""
    return FrameHeader(*HEADER.unpack_from(data, offset))


def window_update(stream_id: int, delta: int, flags: int = Flag.NONE) -> bytes:
    return _pack(PROTOCOL_VERSION, FrameType.WINDOW_UPDATE, flags, stream_id, delta)


def ping(opaque: int, flags: int) -> bytes:
    return _pack(PROTOCOL_VERSION, FrameType.PING, flags, 0, opaque)


def go_away(code: int) -> bytes:
    return _pack(PROTOCOL_VERSION, FrameType.GO_AWAY, 0, 0, code)


def receipt(received: int) -> bytes:
    """A Receipt frame: we have received `received` bytes of the peer's (sent mod 2^32)."""
    return _pack(PROTOCOL_VERSION, FrameType.RECEIPT, 0, 0, received & 0xFFFFFFFF)
