"""The carrier under a session: how frames reach the socket and carrier bytes reach the reader.

What this module owns: the two ways of driving a carrier, behind one interface (`Carrier`):
`receive()` one chunk, `write(take, timeout_s)` and `write_nowait(take)` the frames `take()`
returns, `flush()`, `aclose()`.

- `TransportCarrier` is the fast path for anyio's asyncio/uvloop socket streams: it takes over
  the transport as its protocol, reads ahead a bounded amount and writes batches with
  `writelines`; a write that cannot block happens right away in the task that queued the frames.
- `StreamCarrier` serves any other `ByteStream` (TLS, memory, trio) through `receive`/`send`,
  every write from the session's writer task.

What it may import: anyio's public API, asyncio, socket, `mux._anyio_seam` (the only way to
reach anyio's internals), `mux._config` and `mux._connection`'s `Buffer` type. Nothing of the
session or its streams.

What must stay true:

1. Frames are taken (`take()`) and handed to the carrier in one step, so the batches of racing
   writers stay whole and in the core's order: synchronously on the fast path, under a lock on
   the generic one. Only `write` waits, and never longer than `timeout_s` for room.
2. Read-ahead is bounded: at most `TransportCarrier._MAX_QUEUED_BYTES` read and not yet taken by
   `receive()` before the transport stops reading (TCP backpressure does the rest).
3. Every failure of the carrier surfaces as one of `CARRIER_ERRORS`, the foreign exceptions the
   session maps to `SessionClosed` in one place: `EndOfStream` once the peer's EOF has been read,
   `BrokenResourceError` once the connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc

from mux._anyio_seam import raw_socket, socket_internals
from mux._config import MuxConfig
from mux._connection import Buffer

__all__ = [
    "CARRIER_ERRORS",
    "Carrier",
    "ReceiveBuffer",
    "StreamCarrier",
    "TlsTransportCarrier",
    "TransportCarrier",
    "tune_carrier_socket",
]

#: The most plaintext one TLS record holds (RFC 8446, 5.1).
_TLS_RECORD_BYTES = 16 * 1024

#: What a carrier may raise: the session ends on any of them (see `Session`'s reader and writer).
CARRIER_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


#: Linux's TCP_NOTSENT_LOWAT (include/uapi/linux/tcp.h); the socket module lacks the name.
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def tune_carrier_socket(stream: anyio.abc.ByteStream, config: MuxConfig) -> None:
    """Keep the carrier's send queue in our scheduler, not in the kernel (TCP carriers only).

    TCP_NOTSENT_LOWAT bounds what waits unsent in the kernel's send queue, which would
    otherwise hold megabytes of a bulk stream in front of every small frame of other streams;
    beyond it, frames wait in the core, which orders them. Anything that is not a TCP socket
    (memory streams, trio, a platform without the option) is left alone.
    """
    sock = raw_socket(stream)
    if sock is None:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, config.carrier_unsent_bytes)
    except OSError:  # not Linux, or the socket is gone already
        pass


class ReceiveBuffer:
    """The carrier's kernel receive buffer, shrunk while light and heavy streams share it.

    Left alone (auto-tuned, up to megabytes), a bulk stream's bytes queue there in front of
    every small frame of other streams, where no scheduler can reorder them: 64 B echoes beside
    one bulk stream on loopback waited behind 2-4 MB in this buffer (p50 13-17 ms). While light
    and heavy streams share the carrier (two windows of `window_s` in a row in which one
    stream brought at least `_HEAVY_BYTES` and another at most `_LIGHT_BYTES`), the buffer is
    held at `small_bytes`: the peer's bulk then waits in its own scheduler (TCP_NOTSENT_LOWAT
    keeps its send queue short too), where light frames go first (queue 0.5 MB, p50 3.7 ms).
    Once the mix ends, the buffer goes back to the size it had before (the kernel no longer
    auto-tunes it after that). Only while the session's own round trip (its pings, end to
    end) is short (`short_rtt_s`): on a long path the buffer holds what is in flight, and
    shrinking it capped throughput (a relay on loopback in front of a 50 ms path: the TCP
    hop looked short, and a bulk stream sometimes stalled at 25 Mbit/s).
    """

    #: Per window: a stream that brought this much is heavy, one that brought this little is
    #: light (a request, a keystroke; the core's scheduler has the same idea).
    _HEAVY_BYTES = 1024 * 1024
    _LIGHT_BYTES = 64 * 1024

    def __init__(
        self, sock: socket.socket, small_bytes: int, window_s: float, short_rtt_s: float
    ) -> None:
        self._sock = sock
        self._short_rtt_s = short_rtt_s
        self._small = small_bytes
        self._large = 0  # the size before we shrank it
        self._window_s = window_s
        self._window_end = 0.0
        self._mixed_windows = 0
        self._is_small = False
        #: Bytes per stream in the current window (the session's reader adds to it).
        self.received: dict[int, int] = {}

    @classmethod
    def of(cls, stream: anyio.abc.ByteStream, config: MuxConfig) -> ReceiveBuffer | None:
        """For a TCP carrier; None for anything else."""
        sock = raw_socket(stream)
        if sock is None:
            return None
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return None
        return cls(
            sock,
            config.carrier_mixed_receive_buffer_bytes,
            config.carrier_mix_window_s,
            config.carrier_short_rtt_s,
        )

    def update(self, now: float, rtt_s: float | None) -> None:
        """After each carrier read: judge the window that ended, if one did. `rtt_s` is the
        session's own round trip (pings): only a short one lets the buffer shrink."""
        if now < self._window_end:
            return
        self._window_end = now + self._window_s
        received = self.received
        mixed = (
            len(received) > 1
            and max(received.values()) >= self._HEAVY_BYTES
            and min(received.values()) <= self._LIGHT_BYTES
        )
        received.clear()
        self._mixed_windows = self._mixed_windows + 1 if mixed else 0
        try:
            short = rtt_s is not None and rtt_s < self._short_rtt_s
            if self._mixed_windows >= 2 and short and not self._is_small:
                self._large = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._small)
                self._is_small = True
            elif not mixed and self._is_small:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._large)
                self._is_small = False
        except OSError:  # gone already: the session is ending
            pass


class Carrier(Protocol):
    """What a session needs of its carrier."""

    async def receive(self) -> Buffer:
        """The next chunk of carrier bytes; `anyio.EndOfStream` after the peer's EOF."""
        ...

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        """Write what `take()` returns; raise `TimeoutError` if there is no room for `timeout_s`."""
        ...

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        """Write what `take()` returns if that cannot wait; False (nothing taken) if it could."""
        ...

    async def flush(self) -> None:
        """Wait until what was written has left for the kernel."""
        ...

    async def aclose(self) -> None:
        """Close the carrier."""
        ...


class StreamCarrier:
    """Any `ByteStream` as the carrier (TLS, memory, trio sockets): buffers joined per write.

    `prefix`: bytes already read from `stream` (by whoever looked at its first bytes), handed
    out first.
    """

    def __init__(
        self, stream: anyio.abc.ByteStream, read_size_bytes: int, prefix: bytes = b""
    ) -> None:
        self._stream = stream
        self._read_size_bytes = read_size_bytes
        self._lock = anyio.Lock()
        self._prefix = prefix

    async def receive(self) -> Buffer:
        if self._prefix:
            prefix, self._prefix = self._prefix, b""
            return prefix
        return await self._stream.receive(self._read_size_bytes)

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        """Write the frames `take()` returns. A final flush (close, protocol error) may race
        the writer task, so frames are taken and sent under one lock: whole, and in order."""
        async with self._lock:
            buffers = take()
            if buffers:
                payload = buffers[0] if len(buffers) == 1 else b"".join(buffers)
                with anyio.fail_after(timeout_s):
                    await self._stream.send(bytes(payload))

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        """Never: a stream's `send` may wait, so only the writer task writes."""
        return False

    async def flush(self) -> None:
        """Nothing to do: `send` returns once the stream has taken the bytes."""

    async def aclose(self) -> None:
        await self._stream.aclose()


class TransportCarrier(asyncio.Protocol):
    """Fast path: a carrier that is anyio's asyncio/uvloop socket stream, driven as a protocol.

    Over the loop's SSL transport (`mux.start_tls`) `attach` returns a `TlsTransportCarrier`.

    anyio's stream costs a loop round trip per read and per write, and its zero write-buffer
    limit stops the writer until the kernel has taken every byte. Here the transport keeps
    reading until `_MAX_QUEUED_BYTES` wait for the reader task; writes are gathered
    (`writelines`: one writev under uvloop, no join) and only wait when the transport holds
    more than `_WRITE_HIGH_BYTES`. Everything else still goes through the anyio stream:
    closing, socket options, the caller's view of it.
    """

    #: Bytes read from the socket and not yet parsed beyond which reading pauses. Small: what the
    #: loop reads in one turn it must also parse before any task runs, so a deep read-ahead
    #: only lengthens the turns every other stream waits for (1 MiB -> 256 KiB: echo p99
    #: beside a 9 Gbit/s stream 7.6 -> 5.9 ms, throughput the same).
    _MAX_QUEUED_BYTES = 256 * 1024
    #: Bytes the transport may hold unsent before `write` waits for it to drain to a quarter.
    _WRITE_HIGH_BYTES = 256 * 1024

    @classmethod
    def attach(cls, stream: anyio.abc.ByteStream, prefix: bytes = b"") -> TransportCarrier | None:
        """Take over `stream`'s transport, or None if `stream` is not anyio's asyncio socket.

        `prefix`: bytes already read from `stream`, handed out first.
        """
        internals = socket_internals(stream)
        if internals is None:
            return None
        transport = internals.transport
        tls = transport.get_extra_info("ssl_object") is not None
        kind: type[TransportCarrier] = TlsTransportCarrier if tls else cls
        carrier = kind(stream, transport)
        # Bytes anyio's protocol has read but nobody has received yet come first.
        unread = internals.unread
        if prefix:
            carrier._chunks.append(prefix)
        carrier._chunks.extend(unread)
        carrier._queued_bytes = sum(len(chunk) for chunk in carrier._chunks)
        unread.clear()
        carrier._eof = internals.at_eof
        transport.set_protocol(carrier.as_protocol())
        transport.set_write_buffer_limits(cls._WRITE_HIGH_BYTES, cls._WRITE_HIGH_BYTES // 4)
        transport.resume_reading()  # anyio pauses reading between receives
        return carrier

    def __init__(self, stream: anyio.abc.ByteStream, transport: asyncio.Transport) -> None:
        self._stream = stream
        self._transport = transport
        self._chunks: deque[Buffer] = deque()
        self._queued_bytes = 0
        self._eof = False
        self._lost: BaseException | None = None  # set once the connection is gone
        self._read_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._room = asyncio.Event()  # set while the transport takes more (or has failed)
        self._room.set()
        #: The loop's SSL transport (see `mux.start_tls`) rather than a TCP one.
        self._tls = transport.get_extra_info("ssl_object") is not None
        #: Called (from the loop) when the transport has room again: write what waits right
        #: away, rather than waking a task to do it.
        self.on_room: Callable[[], None] | None = None
        #: Takes a read in the loop's callback while the reader task waits in `receive()`
        #: (the session parses and dispatches it there); see `wake_reader`.
        self.inline: Callable[[Buffer], None] | None = None
        self._reader_error: BaseException | None = None

    def as_protocol(self) -> asyncio.BaseProtocol:
        """What to install on the transport: the carrier itself (a TCP transport)."""
        return self

    # -- called by the session's tasks

    async def receive(self) -> Buffer:
        while not self._chunks:
            if self._reader_error is not None:
                error, self._reader_error = self._reader_error, None
                raise error
            if self._eof:
                raise anyio.EndOfStream
            if self._lost is not None:
                raise anyio.BrokenResourceError from self._lost
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._chunks.popleft()
        self._queued_bytes -= len(data)
        if self._read_paused and self._queued_bytes < self._MAX_QUEUED_BYTES // 2:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        """Write the frames `take()` returns. No lock needed (anyio's costs a loop trip per
        batch): taking frames and handing them to the transport is one synchronous step, so
        the batches of racing writers stay whole and in order; only the wait for room yields."""
        if self._lost is not None or self._transport.is_closing():
            raise anyio.BrokenResourceError from self._lost
        buffers = take()
        if buffers:
            self._write(buffers)
        if not self._room.is_set():
            with anyio.fail_after(timeout_s):
                await self._room.wait()
            if self._lost is not None:
                raise anyio.BrokenResourceError from self._lost

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        """Write the frames `take()` returns if that cannot wait (the transport has room)."""
        if not self._room.is_set() or self._lost is not None or self._transport.is_closing():
            return False
        buffers = take()
        if buffers:
            self._write(buffers)
        return True

    def _write(self, buffers: list[Buffer]) -> None:
        if self._tls and len(buffers) > 1 and sum(map(len, buffers)) <= _TLS_RECORD_BYTES:
            # An SSL transport encrypts each buffer it is handed as a record of its own: a
            # small batch (a 12-byte frame header and its payload, a window update) joined
            # goes out as one record instead of several. A big one is not worth the copy:
            # its records are full anyway (sending 1 GiB: 0.90-0.97 CPU s as it is, 1.02-1.07
            # joined).
            self._transport.write(b"".join(buffers))
        else:
            self._transport.writelines(buffers)

    async def flush(self) -> None:
        """Wait until the transport has handed every byte on (aborting would discard them)."""
        if self._transport.get_write_buffer_size() == 0:
            return  # an SSL transport pauses at a limit of 0 even when empty, and never resumes
        self._transport.set_write_buffer_limits(0, 0)  # pauses us until the buffer is empty
        await self._room.wait()

    async def aclose(self) -> None:
        if self._tls:
            # TLS: close, not abort. The SSL transport hands its last records to the socket,
            # sends close_notify, and closes once the peer answers (or its shutdown timeout
            # ends); anyio's `aclose` would abort and could drop what the socket still holds.
            self._transport.close()
            return
        await self._stream.aclose()

    # -- asyncio.Protocol, called by the event loop

    def data_received(self, data: Buffer) -> None:
        if (
            self._reader is not None
            and self.inline is not None
            and not self._chunks
            and self._reader_error is None
        ):
            # The reader waits with nothing queued: its work can be done right here, one task
            # switch per read fewer (order is kept: nothing is queued, nobody else reads).
            self.inline(data)
            return
        self._chunks.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes >= self._MAX_QUEUED_BYTES and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        # TCP: keep the transport, the session decides when to close it. TLS has no half-close
        # (the peer's close_notify closes both ways) and its transport warns about a True.
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or anyio.BrokenResourceError("the carrier was closed")
        self._wake_reader()
        self._room.set()

    def pause_writing(self) -> None:
        if self._lost is None:
            self._room.clear()

    def resume_writing(self) -> None:
        self._room.set()
        if self.on_room is not None:
            self.on_room()

    def wake_reader(self, error: BaseException | None = None) -> None:
        """From `inline`: make the waiting `receive()` return an empty chunk (the reader has
        something to do: the core paused its input), or raise `error` there."""
        if error is not None:
            self._reader_error = error
        else:
            self._chunks.append(b"")
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)


class TlsTransportCarrier(TransportCarrier):
    """The fast path over the loop's SSL transport: records are decrypted straight into a
    buffer of ours, which the session parses as it is.

    As a plain protocol, the SSL transport decrypts each record into a bytes object of its own,
    then joins the records of one read into another: two more copies and allocations per chunk
    on top of the decryption (receiving 1 GiB on a loaded machine: 1.2-1.75 CPU s that way,
    1.0-1.3 so). It reads into our buffers only for a protocol that has
    `get_buffer`/`buffer_updated` and is no `asyncio.Protocol` (uvloop's test; asyncio's is
    `BufferedProtocol`), which is why `attach` installs a `_BufferedProtocol` in front.
    """

    #: A buffer when the SSL protocol gives no size (it asks for what it holds undecrypted).
    _DEFAULT_BUFFER_BYTES = 64 * 1024
    #: The largest buffer, whatever it holds undecrypted (it reads the rest into the next):
    #: a full 64 KiB Data frame (go-yamux's and our `max_frame_bytes`) is then at least a
    #: quarter of its buffer, which `MuxStream` hands on as a view rather than copying it
    #: (bigger buffers made every bulk frame a copy: 256 KiB + 256 is what a busy carrier asks).
    _MAX_BUFFER_BYTES = 256 * 1024

    def __init__(self, stream: anyio.abc.ByteStream, transport: asyncio.Transport) -> None:
        super().__init__(stream, transport)
        self._buffer = memoryview(b"")

    def as_protocol(self) -> asyncio.BaseProtocol:
        return _BufferedProtocol(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """A fresh buffer each time: the session keeps views of what it has parsed."""
        size = min(sizehint, self._MAX_BUFFER_BYTES) if sizehint > 0 else self._DEFAULT_BUFFER_BYTES
        self._buffer = memoryview(bytearray(size))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # Read-only from here on, as a plain transport's bytes are: a resumable session's
        # replay log keeps such views as they are (a writable one it must copy), and so a
        # frame spliced on to another session is copied by no one.
        self.data_received(self._buffer[:nbytes].toreadonly())
        self._buffer = memoryview(b"")


class _BufferedProtocol(asyncio.BufferedProtocol):
    """What the SSL transport talks to: a `BufferedProtocol`, forwarding to the carrier."""

    def __init__(self, carrier: TlsTransportCarrier) -> None:
        self.get_buffer = carrier.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = carrier.buffer_updated  # type: ignore[method-assign]
        self.eof_received = carrier.eof_received  # type: ignore[method-assign]
        self.connection_lost = carrier.connection_lost  # type: ignore[method-assign]
        self.pause_writing = carrier.pause_writing  # type: ignore[method-assign]
        self.resume_writing = carrier.resume_writing  # type: ignore[method-assign]
