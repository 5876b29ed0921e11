"""TLS on a non-blocking `ssl.SSLSocket` (socket BIO), as an asyncio transport: the subject of
`bench.micro.tls_bio`, which compares it with the loop's SSL transport the carrier uses.

Why it was tried: the loop's SSL transport (asyncio's and uvloop's `sslproto`) runs OpenSSL
over memory BIOs: every received chunk is copied into the incoming BIO before it is decrypted,
every record written is copied out of the outgoing BIO before the socket write. Over a socket
BIO OpenSSL reads records straight from the descriptor and decrypts into the buffer it is
given, and `send` encrypts and writes with nothing in between.

Why it is not the carrier's: it does not pay on this OpenSSL (3.0). Its record layer reads one
record per `read(2)` (without read-ahead two: header, then body; Python cannot switch
read-ahead on) and writes one per `write(2)`, where the loop's transport moves 256 KiB per
system call; the kernel's cost per call (and the receiver's window updates) eats the two
copies saved. See `bench/PROFILES.md` (TLS) for the figures.

It is an `asyncio.Transport` driven by the loop's `add_reader`/`add_writer`, as complete as the
carrier needs (pause/resume, write limits, close_notify); it passed the project's TLS tests
while `mux.start_tls` used it (the commit that introduced it). Longer than 400 lines because a
transport's states (reading, writing, each waiting on the other direction, shutting down) are
one machine, easier to check in one place.

What must stay true:

1. A `send` that raised `SSLWantWriteError`/`SSLWantReadError` is retried with the same
   buffer, unchanged (OpenSSL may already have encrypted part of it), before anything else.
2. A read that needs the socket writable (a key update's answer) or a write that needs it
   readable waits for that, and the other direction is retried from the same event.
3. Plaintext decrypted by OpenSSL and not yet delivered (`pending()`) is delivered without a
   poll event: the loop never learns about it from the descriptor.
4. The peer's close_notify is `eof_received`; a TCP end without it (a ragged EOF) or any
   socket error is `connection_lost(error)`: a truncated stream never looks like a clean one.
5. `close()` hands the pending plaintext to the socket, sends close_notify and waits at most
   `shutdown_timeout_s` for the peer's before closing the descriptor; `abort()` closes at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import ssl
import struct
import termios
from collections import deque
from typing import Any

__all__ = ["TlsSocketTransport"]

#: The most plaintext one TLS record holds (RFC 8446, 5.1): small buffers are joined up to it
#: so that a 12-byte frame header does not cost a record (and a system call) of its own.
_RECORD_BYTES = 16 * 1024
#: Plaintext read per readiness event at most, so that one busy carrier cannot hold the loop
#: (the carrier's own read-ahead bound, `TransportCarrier._MAX_QUEUED_BYTES`).
_READ_BUDGET_BYTES = 256 * 1024
#: The buffer asked of a `BufferedProtocol`: small while reads come in small, the budget once
#: a read filled its buffer (a bulk stream: fewer frames straddle two buffers).
_SMALL_READ_BYTES = 64 * 1024
#: A plain `Protocol`'s read size (the handshake caller's first messages).
_PLAIN_READ_BYTES = 64 * 1024
#: asyncio's default write buffer limit (`FlowControlMixin`).
_DEFAULT_HIGH_BYTES = 64 * 1024

_FIONREAD_BYTES = struct.Struct("i")
_FIONREAD_ZERO = _FIONREAD_BYTES.pack(0)
_SHUTDOWN_WAITS = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsSocketTransport(asyncio.Transport):
    """An asyncio transport over a connected, handshaken, non-blocking `ssl.SSLSocket`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.BaseProtocol,
        shutdown_timeout_s: float,
    ) -> None:
        super().__init__({"socket": sock, "ssl_object": sock})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        #: The `_ssl._SSLSocket` under `sock`: `SSLSocket.recv_into`/`send` are three Python
        #: frames per record around its `read`/`write` (a 16 KiB record: 3 -> 1 us).
        self._sslobj: Any = sock._sslobj  # type: ignore[attr-defined]
        self._shutdown_timeout_s = shutdown_timeout_s
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._pending: deque[Any] = deque()  # plaintext buffers not yet taken by OpenSSL
        self._pending_bytes = 0
        self._tail: bytearray | None = None  # the last of `_pending`, while small ones join it
        self._retrying = False  # `_pending[0]` was refused with a Want*: resend it as it is
        self._high_bytes = _DEFAULT_HIGH_BYTES
        self._low_bytes = _DEFAULT_HIGH_BYTES // 4
        self._protocol_paused = False
        self._reading = False
        self._read_hint = _SMALL_READ_BYTES
        self._read_wants_write = False
        self._write_wants_read = False
        self._reader_on = False
        self._writer_on = False
        self._read_scheduled = False
        self._eof = False  # the peer's close_notify has been read
        self._closing = False
        self._shutting_down = False
        self._shutdown_timer: asyncio.TimerHandle | None = None
        self._lost = False

    # -- asyncio.BaseTransport

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is pending, then close_notify; the descriptor closes once the peer's
        close_notify came or `shutdown_timeout_s` passed."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._reading = False
        if not self._pending:
            self._start_shutdown()
        else:
            self._update_io()

    def abort(self) -> None:
        self._force_close(None)

    # -- asyncio.ReadTransport

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        self._update_io()

    def resume_reading(self) -> None:
        if self._reading or self._closing or self._lost:
            return
        self._reading = True
        self._update_io()
        if self._sock.pending() and not self._read_scheduled:
            # Plaintext OpenSSL holds already: no poll event will announce it (invariant 3).
            self._read_scheduled = True
            self._loop.call_soon(self._scheduled_read)

    # -- asyncio.WriteTransport

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _DEFAULT_HIGH_BYTES if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_bytes, self._low_bytes = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_bytes, self._high_bytes

    def get_write_buffer_size(self) -> int:
        return self._pending_bytes

    def write(self, data: Any) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Any) -> None:
        if self._lost:
            return  # asyncio's transports drop writes once the connection is gone
        if self._closing:
            raise RuntimeError("the TLS transport is closing")
        for data in list_of_data:
            size = len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes
            if not size:
                continue
            self._pending_bytes += size
            tail = self._tail
            if size < _RECORD_BYTES:
                # Small buffers share a record, copied into one buffer (at most a record).
                if tail is not None and len(tail) + size <= _RECORD_BYTES:
                    tail += data
                    continue
                self._tail = bytearray(data)
                self._pending.append(self._tail)
            else:
                self._tail = None
                self._pending.append(data)
        if not (self._writer_on or self._write_wants_read):
            self._send_pending()
        self._maybe_pause_protocol()

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close: close() sends close_notify")

    def can_write_eof(self) -> bool:
        return False

    # -- sending

    def _send_pending(self) -> None:
        """Hand pending buffers to OpenSSL until it would block (invariant 1)."""
        pending = self._pending
        write = self._sslobj.write
        while pending:
            data = pending[0]
            if data is self._tail:
                self._tail = None  # being sent: nothing may join it any more
            try:
                sent = write(data)
            except ssl.SSLWantWriteError:
                self._retrying = True
                break
            except ssl.SSLWantReadError:
                self._retrying = True
                self._write_wants_read = True
                break
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._force_close(exc)
                return
            self._retrying = False
            self._pending_bytes -= sent
            size = len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes
            if sent >= size:
                pending.popleft()
            else:  # only with partial writes on, which Python leaves off; never resent
                pending[0] = memoryview(data).cast("B")[sent:]
        self._update_io()
        self._maybe_resume_protocol()
        if not pending and self._closing and not self._shutting_down:
            self._start_shutdown()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self._pending_bytes <= self._high_bytes or self._lost:
            return
        self._protocol_paused = True
        self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._pending_bytes <= self._low_bytes:
            self._protocol_paused = False
            self._protocol.resume_writing()

    # -- receiving

    def _scheduled_read(self) -> None:
        self._read_scheduled = False
        if self._reading and not self._read_wants_write:
            self._receive()

    def _receive(self) -> None:
        if self._buffered:
            self._receive_into()
        else:
            self._receive_bytes()
        self._update_io()

    def _receive_into(self) -> None:
        """Decrypt into the protocol's buffers, up to the read budget (invariant 3)."""
        read = self._sslobj.read
        budget = _READ_BUDGET_BYTES
        protocol: Any = self._protocol
        while self._reading and budget > 0:
            try:
                # What the kernel holds (ciphertext: at least the plaintext it carries), so
                # that the buffer, which the protocol zeroes, is not mostly left unused.
                answer = fcntl.ioctl(self._fd, termios.FIONREAD, _FIONREAD_ZERO)
                ready = _FIONREAD_BYTES.unpack(answer)[0]
            except OSError:
                ready = self._read_hint
            hint = min(max(ready + self._sock.pending(), 1024), budget)
            buffer = memoryview(protocol.get_buffer(hint))
            size = len(buffer)
            filled = 0
            error: BaseException | None = None
            while filled < size:
                try:
                    count = read(size - filled, buffer[filled:])
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLWantWriteError:
                    self._read_wants_write = True
                    break
                except (OSError, ValueError) as exc:
                    error = exc
                    break
                if count == 0:
                    self._eof = True
                    break
                filled += count
            self._read_hint = _READ_BUDGET_BYTES if filled == size else _SMALL_READ_BYTES
            if filled:
                protocol.buffer_updated(filled)
            budget -= filled
            if error is not None:
                self._force_close(error)
                return
            if self._eof:
                self._eof_received()
                return
            if filled < size:
                return  # nothing more for now
        if self._reading and self._sock.pending() and not self._read_scheduled:
            self._read_scheduled = True  # budget spent: the rest after other callbacks
            self._loop.call_soon(self._scheduled_read)

    def _receive_bytes(self) -> None:
        try:
            data = self._sock.recv(_PLAIN_READ_BYTES)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            return
        except (OSError, ValueError) as exc:
            self._force_close(exc)
            return
        if not data:
            self._eof = True
            self._eof_received()
            return
        protocol: Any = self._protocol
        protocol.data_received(data)
        if self._reading and self._sock.pending() and not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._scheduled_read)

    def _eof_received(self) -> None:
        self._reading = False
        eof_received = getattr(self._protocol, "eof_received", None)
        keep_open = eof_received() if eof_received is not None else None
        if not keep_open:
            self.close()
        self._update_io()

    # -- the loop's events

    def _on_readable(self) -> None:
        if self._shutting_down:
            self._shutdown_step()
            return
        if self._write_wants_read:
            self._write_wants_read = False
            self._send_pending()
        if self._reading and not self._read_wants_write and not self._lost:
            self._receive()
        else:
            self._update_io()

    def _on_writable(self) -> None:
        if self._shutting_down:
            self._shutdown_step()
            return
        if self._read_wants_write:
            self._read_wants_write = False
            if self._reading:
                self._receive()
        if self._pending and not self._write_wants_read and not self._lost:
            self._send_pending()
        else:
            self._update_io()

    def _update_io(self) -> None:
        """Watch the descriptor for what someone waits for, nothing else."""
        if self._lost:
            return
        want_read = (
            self._reading and not self._eof and not self._read_wants_write
        ) or self._write_wants_read
        want_write = (bool(self._pending) and not self._write_wants_read) or self._read_wants_write
        if want_read != self._reader_on:
            if want_read:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)
            self._reader_on = want_read
        if want_write != self._writer_on:
            if want_write:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)
            self._writer_on = want_write

    # -- the end

    def _start_shutdown(self) -> None:
        """Everything sent: close_notify, then wait for the peer's (invariant 5)."""
        self._shutting_down = True
        self._reading = False
        self._shutdown_timer = self._loop.call_later(
            self._shutdown_timeout_s, self._force_close, None
        )
        self._shutdown_step()

    def _shutdown_step(self) -> None:
        try:
            self._sock.unwrap()
        except ssl.SSLWantWriteError:
            self._watch(read=False, write=True)
            return
        except ssl.SSLWantReadError:
            self._watch(read=True, write=False)
            return
        except (OSError, ValueError):  # the peer is gone or broke the protocol: close anyway
            pass
        self._force_close(None)

    def _watch(self, *, read: bool, write: bool) -> None:
        if read != self._reader_on:
            if read:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)
            self._reader_on = read
        if write != self._writer_on:
            if write:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)
            self._writer_on = write

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._watch(read=False, write=False)
        self._lost = True
        self._closing = True
        self._reading = False
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None
        self._pending.clear()
        self._pending_bytes = 0
        self._tail = None
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        finally:
            self._sock.close()
