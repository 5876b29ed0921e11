"""The one place that reaches into anyio's asyncio socket streams.

anyio's `SocketStream` for the asyncio backend (uvloop included) wraps an asyncio transport and a
`StreamProtocol` that queues what the loop reads. Five things above need what anyio does not
expose: the carrier fast path drives the transport as a protocol of its own (`socket_internals`),
so does a visitor's relay (`take_over`), an accepted socket must stop reading until someone
waits (`pause_reading`), a visitor socket must read at most one chunk per wait
(`read_one_chunk_per_wait`), and what a visitor sent with its connect is taken at once to ride
its stream's SYN (`read_ready`).

Every private attribute of anyio used anywhere in the code base is read here and nowhere else:
`SocketStream._transport`, `SocketStream._protocol`, `StreamProtocol.read_queue`,
`StreamProtocol.read_event`, `StreamProtocol.is_at_eof` and `StreamProtocol.data_received`.
`pyproject.toml` pins anyio to the range these were checked against, and
`tests/mux/test_anyio_seam.py` fails loudly (rather than letting the fast path silently switch
off) when a stream of the asyncio backend no longer looks the way this module expects.

Any other stream (trio, TLS wrappers, memory streams) is left alone: each function reports or
does nothing for it.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

import anyio.abc

__all__ = [
    "ANYIO_ASYNCIO_STREAM_MODULE",
    "SocketInternals",
    "pause_reading",
    "read_one_chunk_per_wait",
    "read_ready",
    "socket_internals",
    "take_over",
]

#: Where anyio defines its asyncio `SocketStream` (uvloop's transports do not subclass
#: `asyncio.Transport`, so the stream's class is what tells an asyncio socket stream apart).
ANYIO_ASYNCIO_STREAM_MODULE = "anyio._backends._asyncio"


class SocketInternals:
    """The transport and protocol behind one of anyio's asyncio socket streams."""

    __slots__ = ("protocol", "transport")

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self.transport = transport
        self.protocol = protocol

    @property
    def unread(self) -> deque[bytes]:
        """Bytes anyio's protocol has read that nobody has received yet (oldest first)."""
        queue: deque[bytes] = self.protocol.read_queue
        return queue

    @property
    def at_eof(self) -> bool:
        """True once the peer's EOF has reached anyio's protocol."""
        return bool(getattr(self.protocol, "is_at_eof", False))


def socket_internals(stream: anyio.abc.ByteStream) -> SocketInternals | None:
    """The transport and protocol of an anyio asyncio socket stream that is still open, or None
    for any other stream (or one whose internals do not look as expected)."""
    if type(stream).__module__ != ANYIO_ASYNCIO_STREAM_MODULE:
        return None
    transport: Any = getattr(stream, "_transport", None)
    protocol: Any = getattr(stream, "_protocol", None)
    if (
        transport is None
        or not hasattr(transport, "set_protocol")
        or not isinstance(getattr(protocol, "read_queue", None), deque)
        or not isinstance(getattr(protocol, "read_event", None), asyncio.Event)
        or not callable(getattr(protocol, "data_received", None))
    ):
        return None
    try:
        if transport.is_closing():
            return None
    except (AttributeError, RuntimeError):  # uvloop: the handle is already gone
        return None
    return SocketInternals(transport, protocol)


def take_over(
    stream: anyio.abc.ByteStream, protocol: asyncio.BaseProtocol
) -> tuple[asyncio.Transport, bytes, bool] | None:
    """Make `protocol` the protocol of `stream`'s transport, or None (nothing changed) if
    `stream` is not an open asyncio socket stream.

    Returns the transport, the bytes anyio had read that nobody received (they come before
    anything `protocol` sees) and whether the peer's EOF was among them. Reading stays as it
    was (accepted sockets: paused; see `pause_reading`): the caller resumes it when ready.
    The anyio stream must not be read or written after this; closing it closes the transport.
    """
    internals = socket_internals(stream)
    if internals is None:
        return None
    unread = internals.unread
    data = b"".join(unread)
    unread.clear()
    at_eof = internals.at_eof
    internals.transport.set_protocol(protocol)
    return internals.transport, data, at_eof


def read_ready(stream: anyio.abc.ByteStream, max_bytes: int) -> bytes:
    """Up to `max_bytes` the peer already sent, taken now without waiting; b"" if none (or at
    EOF, which the stream then still sees).

    First what anyio's protocol read and nobody received (uvloop reads an accepted socket at
    once), then what the kernel holds: a non-blocking read of the socket, which is safe only
    while the transport is not reading it (an accepted socket before it is served; see
    `pause_reading`). Anything else (not an asyncio socket) gives b"".
    """
    internals = socket_internals(stream)
    if internals is None:
        return b""
    unread = internals.unread
    data = b""
    while unread and len(data) + len(unread[0]) <= max_bytes:
        data += unread.popleft()
    if not unread:
        internals.protocol.read_event.clear()  # else the next receive() sees a false EOF
    if unread or internals.at_eof or len(data) >= max_bytes:
        return data
    try:
        fd = internals.transport.get_extra_info("socket").fileno()
        return data + os.read(fd, max_bytes - len(data))
    except (OSError, AttributeError, ValueError):  # nothing yet (EAGAIN), or gone already
        return data


def pause_reading(stream: anyio.abc.ByteStream) -> None:
    """Make an accepted socket read only while someone waits in `receive()`.

    anyio's asyncio listener hands out accepted sockets with reading switched on (its
    `connect_tcp` pauses them; `accept` does not), and `receive()` only pauses reading again
    once its queue has run dry. A peer that sends faster than we consume from the first byte on
    (a flooding carrier, a visitor pushing into a slow tunnel) never lets it run dry, so every
    byte it sends would be queued in our memory: 64 MiB of pings in 0.2 s under uvloop. Pausing
    restores TCP backpressure.
    """
    internals = socket_internals(stream)
    if internals is None:
        return
    try:
        internals.transport.pause_reading()
    except (RuntimeError, AttributeError):  # closed meanwhile
        pass


def read_one_chunk_per_wait(stream: anyio.abc.ByteStream) -> None:
    """Make a socket stream read at most one chunk (<= 256 KiB) per `receive()` wait.

    anyio resumes reading while `receive()` waits and pauses it again only once the waiting task
    runs; in between, the loop reads for as long as the socket has data (uvloop: up to 32 reads
    of 256 KiB per readiness event). One wait could so queue 8 MiB and hold the event loop for
    milliseconds: every other stream of the process waited (64 B echo p99 beside a bulk stream,
    6.5 ms -> 1.2 ms on the reply's hop through `listen`), and the memory was ours, not the
    kernel's. Pausing inside `data_received` stops that at one read.
    """
    internals = socket_internals(stream)
    if internals is None:
        return
    transport, protocol = internals.transport, internals.protocol
    received = protocol.data_received

    def data_received(data: bytes) -> None:
        received(data)
        transport.pause_reading()  # anyio's receive() resumes it when it waits again

    protocol.data_received = data_received
    transport.set_protocol(protocol)  # uvloop caches the protocol's bound methods
