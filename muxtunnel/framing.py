"""How control messages travel: a 2-byte big-endian length, then one msgpack map.

The map's `kind` key names the message (`muxtunnel.control` defines them, as `Wire`s). A frame
longer than `MAX_MESSAGE_BYTES` is refused from its length prefix, before any of its body is
read; whatever else a peer sends raises `ControlError`, or lets `anyio.EndOfStream` through.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, ClassVar, Self

import anyio
import msgpack  # type: ignore[import-untyped]
from anyio.abc import ByteReceiveStream

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ControlError",
    "Wire",
    "frame",
    "receive_exactly",
    "receive_frame",
    "unpack_map",
]

#: Largest message body. Control messages are a few hundred bytes; 4 KiB leaves room for error
#: text while keeping what an unauthenticated peer can make us buffer small.
MAX_MESSAGE_BYTES = 4096
_PREFIX = struct.Struct(">H")


class ControlError(Exception):
    """The peer sent a malformed control message. `code` is the Error code to answer with
    (`control.BAD_REQUEST` unless said)."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class Wire:
    """Shared `to_wire`/`from_wire`: fields map to keys of the same name, plus `kind`."""

    WIRE_KIND: ClassVar[str]
    #: Fields added in later versions: left off the wire while they hold their default, so a
    #: message that uses no new feature is byte for byte what older versions send.
    EXTENSIONS: ClassVar[tuple[str, ...]] = ()
    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"kind": self.WIRE_KIND}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.name in self.EXTENSIONS and value == item.default:
                continue
            wire[item.name] = value
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        """Build from a decoded map; `ControlError` if a field is missing or invalid.

        A missing field that has a default takes it (a peer of an older version may not send it).
        """
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            if item.name in data:
                values[item.name] = data[item.name]
            elif item.default is dataclasses.MISSING:
                raise ControlError(f"{cls.WIRE_KIND!r} message lacks field {item.name!r}")
        try:
            return cls(**values)
        except ValueError as exc:
            raise ControlError(f"bad {cls.WIRE_KIND!r} message: {exc}") from None


def frame(wire: dict[str, Any]) -> bytes:
    """Length prefix plus msgpack body of `wire`; `ValueError` over `MAX_MESSAGE_BYTES`."""
    body: bytes = msgpack.packb(wire, use_bin_type=True)
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{wire['kind']!r} message of {len(body)} bytes exceeds the limit")
    return _PREFIX.pack(len(body)) + body


def unpack_map(body: bytes) -> dict[str, Any]:
    """The map of one frame's body, with a string `kind`; `ControlError` otherwise."""
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


async def receive_exactly(stream: ByteReceiveStream, size: int) -> bytes:
    """Exactly `size` bytes, and not one more; `anyio.EndOfStream` if the peer ends first."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive(size - len(buffer))
        if not chunk:
            raise anyio.EndOfStream
        buffer += chunk
    return bytes(buffer)


async def receive_frame(stream: ByteReceiveStream) -> bytes:
    """The body of the next frame on `stream` (its length checked before it is read)."""
    (size,) = _PREFIX.unpack(await receive_exactly(stream, _PREFIX.size))
    if size > MAX_MESSAGE_BYTES:
        raise ControlError(f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    if size == 0:
        raise ControlError("empty message")
    return await receive_exactly(stream, size)
