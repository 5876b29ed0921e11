"""Helpers for testing the multiplexer and anything built on it. Not part of the wheel.

`pyproject.toml` leaves this package out of the built distribution (the shipped `mux` stays
the protocol and its adapter); a checkout's editable install imports it as `mux.testing`.

- `frames`: `Frame`, `FrameBuilder` (any frame, valid or not), `parse_frames`, `FrameReader`,
  `drain_frames`, and `feed` (a core fed whole, byte by byte, or with trailing bytes).
- `pairs`: `ConnectionPair` (two cores back to back), `memory_stream_pair` (a bounded in-memory
  carrier that can stall), `tcp_stream_pair` (loopback sockets), `session_pair` (two `Session`s
  over either).
- `peers`: `RawPeer`, raw frames on the far end of a carrier, for peers that misbehave.
- `echo_stream` and `echo_streams`: the one echo loop (it lives in `mux._echo`, which ships
  because `python -m mux echo-server` uses it).
"""

from mux._echo import echo_stream, echo_streams
from mux.testing.frames import (
    FEED_MODES,
    Frame,
    FrameBuilder,
    FrameReader,
    drain_frames,
    feed,
    merge_events,
    parse_frames,
)
from mux.testing.pairs import (
    ConnectionPair,
    MemoryByteStream,
    memory_stream_pair,
    random_chunks,
    session_pair,
    tcp_stream_pair,
)
from mux.testing.peers import RawPeer

__all__ = [
    "FEED_MODES",
    "ConnectionPair",
    "Frame",
    "FrameBuilder",
    "FrameReader",
    "MemoryByteStream",
    "RawPeer",
    "drain_frames",
    "echo_stream",
    "echo_streams",
    "feed",
    "memory_stream_pair",
    "merge_events",
    "parse_frames",
    "random_chunks",
    "session_pair",
    "tcp_stream_pair",
]
