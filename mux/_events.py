"""Events the core hands to its driver: frozen, typed, past tense."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN) and it is waiting in the accept backlog."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAcked:
    """The peer acknowledged a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes arrived on a stream. `data` may be a slice of the caller's input buffer."""

    stream_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent FIN: no more bytes will arrive on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream was reset by the peer; it is gone from the stream table."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered the ping carrying `opaque`."""

    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer will accept no new streams; `code` is 0 normal, 1 protocol error, 2 internal."""

    code: int


Event = (
    StreamOpened
    | StreamAcked
    | DataReceived
    | StreamEnded
    | StreamReset
    | PongReceived
    | GoAwayReceived
)
