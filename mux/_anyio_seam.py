"""The one place that reaches into anyio's asyncio socket streams.

anyio's `SocketStream` for the asyncio backend (uvloop included) wraps an asyncio transport and a
`StreamProtocol` that queues what the loop reads. Seven things above need what anyio does not
expose: the carrier fast path drives the transport as a protocol of its own (`socket_internals`),
so does a visitor's relay (`take_over`), an accepted socket must stop reading until someone
waits (`pause_reading`), a visitor socket must read at most one chunk per wait
(`read_one_chunk_per_wait`), what a visitor sent with its connect is taken at once to ride its
stream's SYN (`read_ready`), a carrier is upgraded to TLS on the transport itself
(`start_tls`), so that the fast path drives the loop's SSL transport rather than a TLS wrapper
that costs a task switch and a copy per read and per write, the HTTP proxy writes a
response to its visitor without anyio's yield after the write (`write_now`), and a new visitor's
address is read from what the transport noted at its accept (`peer_name`), not asked of the
kernel again, and a listener accepts for itself, several queued connections per wake-up
of its persistent reader (`listening_socket`, `adopt_accepted`).

Every private attribute of anyio used anywhere in the code base is read here and nowhere else:
`SocketStream._transport`, `SocketStream._protocol`, `StreamProtocol.read_queue`,
`StreamProtocol.read_event`, `StreamProtocol.is_at_eof`, `StreamProtocol.data_received`,
`StreamProtocol.write_event` and `StreamProtocol.exception`; and
`start_tls` builds a `StreamProtocol` and a `SocketStream` of its own (`type(protocol)()`,
`type(stream)(transport, protocol)`), as anyio's `connect_tcp` does, and so does
`adopt_accepted` (importing both classes from `anyio._backends._asyncio`), as anyio's
`TCPSocketListener.accept` does. `pyproject.toml` pins anyio
to the range these were checked against, and `tests/mux/test_anyio_seam.py` fails loudly (rather
than letting the fast path silently switch off) when a stream of the asyncio backend no longer
looks the way this module expects.

Any other stream (trio, TLS wrappers, memory streams) is left alone: each function reports or
does nothing for it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections import deque
from typing import Any

import anyio
import anyio.abc

__all__ = [
    "ANYIO_ASYNCIO_STREAM_MODULE",
    "SocketInternals",
    "adopt_accepted",
    "listening_socket",
    "pause_reading",
    "peer_name",
    "read_one_chunk_per_wait",
    "read_ready",
    "socket_internals",
    "start_tls",
    "take_over",
    "write_now",
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


def raw_socket(stream: anyio.abc.ByteStream) -> Any | None:
    """The stream's open socket, or None: not a socket stream, or one already closed (anyio's
    `extra` of a closed stream raises AttributeError under uvloop, whose raw socket is None;
    under asyncio the socket's descriptor is -1)."""
    try:
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        return sock if sock.fileno() >= 0 else None
    except (anyio.TypedAttributeLookupError, AttributeError, OSError, ValueError):
        return None


def listening_socket(listener: anyio.abc.Listener[Any]) -> socket.socket | None:
    """The listening socket of one of anyio's asyncio TCP listeners, to accept from ourselves
    (`adopt_accepted`), or None for any other listener (trio's, UNIX sockets, wrappers)."""
    if (
        type(listener).__module__ != ANYIO_ASYNCIO_STREAM_MODULE
        or type(listener).__name__ != "TCPSocketListener"
    ):
        return None
    try:
        sock = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return None
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return None
    return sock


async def adopt_accepted(sock: socket.socket) -> anyio.abc.SocketStream:
    """The anyio socket stream of a connection we accepted from a `listening_socket`: the
    same transport, protocol and stream anyio's own `accept` makes (TCP_NODELAY is set by the
    loop's transport, asyncio's and uvloop's alike). OSError if the socket is unusable."""
    from anyio._backends._asyncio import SocketStream, StreamProtocol

    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(StreamProtocol, sock)
    return SocketStream(transport, protocol)


def peer_name(stream: anyio.abc.ByteStream) -> Any | None:
    """The peer's address as the transport noted it when the socket was made, or None (not an
    open asyncio socket stream: ask `stream.extra` then).

    anyio's `SocketAttribute.remote_address` asks the kernel each time, and building the
    stream's attribute table costs two `getsockname` and a `getpeername` per call: three
    system calls of a new visitor's ~58 on the server (bench/PROFILES.md).
    """
    internals = socket_internals(stream)
    if internals is None:
        return None
    return internals.transport.get_extra_info("peername")


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


def write_now(stream: anyio.abc.ByteStream, data: bytes) -> bool:
    """Write `data` to `stream`'s transport at once if it has room; False (nothing written)
    when it has none, or is closing or failed, or is not an asyncio socket stream: the
    caller then awaits `stream.send(data)`, which waits for room or raises.

    anyio's `send` also yields to the loop after every write that did not have to wait (a
    cancel-shielded checkpoint: ~6 us of a ~90 us proxied HTTP request). A caller whose next
    step waits anyway (the HTTP proxy reads the visitor's next request) need not.
    """
    internals = socket_internals(stream)
    if internals is None:
        return False
    protocol = internals.protocol
    write_event = getattr(protocol, "write_event", None)
    if (
        not isinstance(write_event, asyncio.Event)
        or not write_event.is_set()
        or getattr(protocol, "exception", None) is not None
    ):
        return False
    internals.transport.write(data)
    return True


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
    if data or unread or internals.at_eof or len(data) >= max_bytes:
        # The loop's read that gave `data` asked for 256 KiB and got less: the kernel had no
        # more then, and a second read now would almost always be EAGAIN (a system call).
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


async def start_tls(
    stream: anyio.abc.ByteStream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    handshake_timeout_s: float | None = None,
    shutdown_timeout_s: float | None = None,
) -> tuple[anyio.abc.SocketStream, ssl.SSLObject] | None:
    """Run a TLS handshake on an anyio asyncio socket stream's own transport (`loop.start_tls`).

    Returns a new anyio `SocketStream` over the loop's SSL transport (the old `stream` must not
    be used again) and the connection's `SSLObject` (peer certificate, cipher, ...); None for
    any other stream, which the caller wraps as it likes. Handshake failures raise what the
    loop raises: `ssl.SSLError`, `ConnectionError`, `TimeoutError`; a peer that has already
    closed raises `anyio.EndOfStream`.

    The new stream is what `socket_internals` and so the carrier fast path recognise: anyio's
    `receive`/`send` work on it for whatever the caller exchanges first, then the carrier
    takes the SSL transport over (`set_protocol`, pause/resume reading, write limits: all
    exist on asyncio's and uvloop's SSL transports). TLS has no half-close (`send_eof` raises);
    anyio's `aclose` aborts without a close_notify, closing the transport sends one (and waits
    up to `shutdown_timeout_s` for the peer's before it closes the socket).

    Bytes anyio read before the handshake (a client's hello arriving before the server got
    here) are not lost: they are handed to the loop's SSL protocol after it is connected and
    before the transport reads again. `start_tls` installs the SSL protocol, then schedules
    its `connection_made` and the transport's `resume_reading` (`call_soon`, on asyncio and
    uvloop alike); a callback scheduled from a callback that runs right after `start_tls`'s
    first step is queued behind both, in the same turn of the loop and before it polls the
    socket again.
    """
    internals = socket_internals(stream)
    if internals is None:
        return None
    transport = internals.transport
    transport.pause_reading()  # from now on nothing more reaches anyio's protocol...
    if internals.at_eof:
        raise anyio.EndOfStream
    unread = b"".join(internals.unread)  # ...so this is all it read, and it goes first
    internals.unread.clear()
    protocol = type(internals.protocol)()  # anyio's StreamProtocol, fresh: no patched reads
    protocol.connection_made(transport)  # its queues and events (and a zero write limit...)
    transport.set_write_buffer_limits()  # ...that TLS records must not wait on: the default
    loop = asyncio.get_running_loop()
    handshake = loop.create_task(
        loop.start_tls(
            transport,
            protocol,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout_s,
            ssl_shutdown_timeout=shutdown_timeout_s,
        )
    )
    if unread:
        loop.call_soon(loop.call_soon, _feed_unread, transport, unread)
    try:
        tls_transport = await handshake
    except BaseException:
        handshake.cancel()
        raise
    if tls_transport is None:  # typeshed allows it; neither loop returns it
        raise ConnectionError("the TLS handshake returned no transport")
    # Not anyio's zero write limit: an SSL transport pauses its writer once its buffer is at
    # least the limit, so with 0 it would pause after every write and never resume.
    tls_transport.pause_reading()  # as anyio's connect_tcp leaves it: `receive` resumes it
    ssl_object = tls_transport.get_extra_info("ssl_object")
    stream_class: Any = type(stream)  # anyio's asyncio SocketStream(transport, protocol)
    upgraded: anyio.abc.SocketStream = stream_class(tls_transport, protocol)
    return upgraded, ssl_object


def _feed_unread(transport: Any, data: bytes) -> None:
    """Hand bytes read before the handshake to the SSL protocol now installed on `transport`."""
    if transport.is_closing():
        return
    tls_protocol = transport.get_protocol()
    get_buffer = getattr(tls_protocol, "get_buffer", None)
    buffer_updated = getattr(tls_protocol, "buffer_updated", None)
    if get_buffer is None or buffer_updated is None:  # not a loop we know: fail, lose nothing
        transport.abort()
        return
    view = memoryview(data)
    while view:
        buffer = get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffer_updated(size)
        view = view[size:]
