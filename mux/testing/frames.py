"""Frames as bytes and back, for tests: build any frame (valid or not), decode what a core wrote,
and feed a core in the ways that must not change what it does.

- `FrameBuilder` writes any frame, valid or not; `parse_frames` and `FrameReader` read frames
  back for assertions; `drain_frames` decodes what a core wants to write.
- `feed` drives a core whole, byte by byte, or with trailing bytes (h11's `tr()` idea), and
  `merge_events` makes the events of those runs comparable.

No anyio here: these helpers drive the sans-IO core only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from mux._connection import Buffer, Connection
from mux._const import HEADER, HEADER_SIZE, PROTOCOL_VERSION, Flag, FrameType
from mux._events import DataReceived, Event, PongReceived

__all__ = [
    "FEED_MODES",
    "Frame",
    "FrameBuilder",
    "FrameReader",
    "drain_frames",
    "feed",
    "merge_events",
    "parse_frames",
]


class Frame(NamedTuple):
    """One decoded frame. `body` is empty for everything but Data."""

    version: int
    type: int
    flags: int
    stream_id: int
    length: int
    body: bytes = b""

    def has(self, flag: Flag) -> bool:
        return bool(self.flags & flag)


class FrameBuilder:
    """Builds frames as bytes, including malformed ones (the h2 test suite's FrameFactory idea).

    Every builder takes `version` and the raw fields, so a test can lie about any of them:
    `data(1, b"abc", length=2**32 - 1)` writes a Data header claiming 4 GiB followed by 3 bytes.
    """

    def __init__(self, version: int = PROTOCOL_VERSION) -> None:
        self.version = version

    def frame(
        self,
        type: int,
        flags: int = 0,
        stream_id: int = 0,
        length: int = 0,
        body: Buffer = b"",
        *,
        version: int | None = None,
    ) -> bytes:
        version = self.version if version is None else version
        return HEADER.pack(version, type, int(flags), stream_id, length) + bytes(body)

    def data(
        self,
        stream_id: int,
        body: Buffer = b"",
        flags: int = 0,
        *,
        length: int | None = None,
        version: int | None = None,
    ) -> bytes:
        length = len(body) if length is None else length
        return self.frame(FrameType.DATA, flags, stream_id, length, body, version=version)

    def window_update(
        self, stream_id: int, delta: int = 0, flags: int = 0, *, version: int | None = None
    ) -> bytes:
        return self.frame(FrameType.WINDOW_UPDATE, flags, stream_id, delta, version=version)

    def syn(self, stream_id: int, body: Buffer = b"") -> bytes:
        """Open a stream: a WindowUpdate with SYN, or a Data frame with SYN when `body` is given."""
        if body:
            return self.data(stream_id, body, Flag.SYN)
        return self.window_update(stream_id, 0, Flag.SYN)

    def ack(self, stream_id: int) -> bytes:
        return self.window_update(stream_id, 0, Flag.ACK)

    def fin(self, stream_id: int) -> bytes:
        return self.window_update(stream_id, 0, Flag.FIN)

    def rst(self, stream_id: int) -> bytes:
        return self.window_update(stream_id, 0, Flag.RST)

    def ping(self, opaque: int = 0, *, ack: bool = False, stream_id: int = 0) -> bytes:
        flags = Flag.ACK if ack else Flag.SYN
        return self.frame(FrameType.PING, flags, stream_id, opaque)

    def go_away(self, code: int = 0, *, stream_id: int = 0) -> bytes:
        return self.frame(FrameType.GO_AWAY, 0, stream_id, code)


def parse_frames(data: Buffer) -> list[Frame]:
    """Decode what a core wrote. Data bodies are taken from the stream; the input must be whole."""
    view = memoryview(bytes(data))
    frames: list[Frame] = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise ValueError(f"{len(view) - pos} trailing bytes are not a frame header")
        version, type, flags, stream_id, length = HEADER.unpack_from(view, pos)
        pos += HEADER_SIZE
        body = b""
        if type == FrameType.DATA:
            if len(view) - pos < length:
                raise ValueError(f"data frame claims {length} bytes, {len(view) - pos} follow")
            body = bytes(view[pos : pos + length])
            pos += length
        frames.append(Frame(version, type, flags, stream_id, length, body))
    return frames


class FrameReader:
    """Incremental `parse_frames`: feed bytes in any chunks, get whole frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: Buffer) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER_SIZE:
            version, type, flags, stream_id, length = HEADER.unpack_from(self._buffer)
            body_size = length if type == FrameType.DATA else 0
            if len(self._buffer) < HEADER_SIZE + body_size:
                break
            body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + body_size])
            del self._buffer[: HEADER_SIZE + body_size]
            frames.append(Frame(version, type, flags, stream_id, length, body))
        return frames


def drain_frames(conn: Connection, max_bytes: int | None = None) -> list[Frame]:
    """Everything `conn` wants to write now, decoded."""
    return parse_frames(b"".join(bytes(b) for b in conn.data_to_send(max_bytes)))


def merge_events(events: Iterable[Event]) -> list[Event]:
    """Events with adjacent DataReceived of one stream joined (and copied out of the input).

    Feeding the same bytes in different chunks yields the same merged events.
    """
    merged: list[Event | list[DataReceived]] = []
    for event in events:
        if isinstance(event, DataReceived):
            last = merged[-1] if merged else None
            if isinstance(last, list) and last[0].stream_id == event.stream_id:
                last.append(event)
            else:
                merged.append([event])
        else:
            merged.append(event)
    return [
        DataReceived(item[0].stream_id, memoryview(b"".join(e.data for e in item)))
        if isinstance(item, list)
        else item
        for item in merged
    ]


#: How `feed` may cut the input: in one piece, one byte at a time, or followed by a partial frame.
FEED_MODES = ("whole", "bytewise", "trailing")
_TRAILER_OPAQUE = 0x7EA1_7A11


def feed(conn: Connection, data: Buffer, mode: str = "whole", now: float = 0.0) -> list[Event]:
    """Feed `data` to `conn` as `mode` says; returns the merged events.

    "trailing" feeds `data` plus the first bytes of a pong, checks that those bytes produced
    nothing yet, then completes the pong and strips its event: the input's events must not depend
    on what follows them.
    """
    data = bytes(data)
    if mode == "whole":
        return merge_events(conn.receive_data(data, now))
    if mode == "bytewise":
        events: list[Event] = []
        for i in range(len(data)):
            events += conn.receive_data(data[i : i + 1], now)
        return merge_events(events)
    if mode == "trailing":
        trailer = FrameBuilder().ping(_TRAILER_OPAQUE, ack=True)
        events = merge_events(conn.receive_data(data + trailer[:5], now))
        if conn.terminated is not None or conn.reading_paused:
            return events
        rest = conn.receive_data(trailer[5:], now)
        if rest != [PongReceived(_TRAILER_OPAQUE)]:
            raise AssertionError(f"the trailing frame was not parsed on its own: {rest!r}")
        return events
    raise ValueError(f"unknown feed mode {mode!r}")
