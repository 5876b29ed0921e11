"""The framing of the control protocol (`muxtunnel.control`): a 2-byte big-endian length, then a
msgpack map whose `kind` key names the message.

Peer bytes enter only through `receive_frame` and `unpack_map`; whatever they hold, those raise
`ControlError` (carrying the error code to answer with) or let `anyio.EndOfStream` through. A
frame longer than `MAX_MESSAGE_BYTES` is refused from its length prefix, before any of its body
is read.
"""

from __future__ import annotations

import struct
from typing import Any

import anyio
import msgpack  # type: ignore[import-untyped]
from anyio.abc import ByteReceiveStream

__all__ = [
    "BAD_REQUEST",
    "MAX_MESSAGE_BYTES",
    "ControlError",
    "frame",
    "receive_frame",
    "unpack_map",
]

#: Largest message body. Control messages are a few hundred bytes; 4 KiB leaves room for error
#: text while keeping what an unauthenticated peer can make us buffer small.
MAX_MESSAGE_BYTES = 4096
_PREFIX = struct.Struct(">H")
#: The error code of a malformed message (`control.Error.code`).
BAD_REQUEST = "bad_request"


class ControlError(Exception):
    """The peer sent a malformed control message. `code` is the Error code to answer with."""

    def __init__(self, message: str, code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def frame(wire: dict[str, Any]) -> bytes:
    """Length prefix plus msgpack body. `ValueError` if it would exceed the size limit."""
    body: bytes = msgpack.packb(wire, use_bin_type=True)
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{wire['kind']!r} message of {len(body)} bytes exceeds the limit")
    return _PREFIX.pack(len(body)) + body


def unpack_map(body: bytes) -> dict[str, Any]:
    """A frame's body as a map with a string `kind`; `ControlError` for anything else."""
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ControlError(f"undecodable message: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ControlError("message is not a map")
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise ControlError("message lacks a string 'kind'")
    return data


async def _receive_exactly(stream: ByteReceiveStream, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive(size - len(buffer))
        if not chunk:
            raise anyio.EndOfStream
        buffer += chunk
    return bytes(buffer)


async def receive_frame(stream: ByteReceiveStream) -> bytes:
    """The body of the next frame (deadlines are the caller's)."""
    (size,) = _PREFIX.unpack(await _receive_exactly(stream, _PREFIX.size))
    if size > MAX_MESSAGE_BYTES:
        raise ControlError(f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    if size == 0:
        raise ControlError("empty message")
    return await _receive_exactly(stream, size)
