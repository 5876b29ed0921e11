"""mux: a yamux-compatible stream multiplexer.

`Connection` is the sans-IO core (bytes in, events and bytes out); `Session` and `MuxStream`
(from `mux.aio`) run it over any anyio byte stream. The wire format is hashicorp/yamux's; see
SPEC.md beside this file for our reading of it.
"""

from mux._anyio_seam import (
    adopt_accepted,
    listening_socket,
    pause_reading,
    peer_name,
    read_one_chunk_per_wait,
    read_ready,
    start_tls,
    take_over,
    write_now,
)
from mux._config import MuxConfig
from mux._connection import Connection
from mux._const import Flag, FrameType, GoAwayCode
from mux._errors import LocalProtocolError, MuxError, ProtocolError, RemoteProtocolError
from mux._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from mux._stream import StreamConsumer
from mux.aio import MuxStream, Session, SessionClosed, StreamResetError

__all__ = [
    "Connection",
    "DataReceived",
    "Event",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "GoAwayReceived",
    "LocalProtocolError",
    "MuxConfig",
    "MuxError",
    "MuxStream",
    "PongReceived",
    "ProtocolError",
    "RemoteProtocolError",
    "Session",
    "SessionClosed",
    "StreamAcked",
    "StreamConsumer",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "StreamResetError",
    "adopt_accepted",
    "listening_socket",
    "pause_reading",
    "peer_name",
    "read_one_chunk_per_wait",
    "read_ready",
    "start_tls",
    "take_over",
    "write_now",
]
