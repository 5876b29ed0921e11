"""Server-side TLS over any byte stream, with half-close: `send_eof` sends close_notify.

anyio's `TLSStream` cannot half-close (its `send_eof` raises), so a proxied WebSocket over a
terminated TLS connection could not tell the visitor that the service finished: the visitor
waited for its own close timeout. Here `send_eof` sends our close_notify and keeps reading
(TLS 1.3 makes close_notify a write-side close, RFC 8446 §6.1; OpenSSL reads on after it for
TLS 1.2 as well), so half-close carries end to end like on a plain socket.

Invariants: all TLS state is one `ssl.SSLObject` over two memory BIOs; only the reading task
feeds the incoming BIO; every byte the SSLObject writes is flushed under `_send_lock`, since
the reader (post-handshake messages) and the writer may both have records to send.
A visitor that closes TCP without close_notify is an end of stream, not an error: HTTP's own
framing, not TLS, tells a whole message from a cut one (as anyio's `standard_compatible=False`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.abc

__all__ = ["TlsServerStream"]

T = TypeVar("T")


class TlsServerStream(anyio.abc.ByteStream):
    """The server side of a TLS session carried by `transport`."""

    def __init__(self, transport: anyio.abc.ByteStream, context: ssl.SSLContext) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._send_lock = anyio.Lock()
        self._eof_sent = False

    @classmethod
    async def accept(
        cls, transport: anyio.abc.ByteStream, context: ssl.SSLContext
    ) -> TlsServerStream:
        """Run the handshake; `ssl.SSLError` or anyio's stream errors when it fails."""
        stream = cls(transport, context)
        await stream._call(stream._ssl.do_handshake)
        return stream

    async def _flush(self) -> None:
        if self._outgoing.pending:
            async with self._send_lock:
                data = self._outgoing.read()
                if data:
                    await self.transport.send(data)

    async def _call(self, operation: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                await self._flush()
                try:
                    data = await self.transport.receive()
                except anyio.EndOfStream:
                    self._incoming.write_eof()
                else:
                    self._incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                await self._flush()
                raise anyio.EndOfStream from None
            except ssl.SSLError as exc:
                raise anyio.BrokenResourceError(f"TLS: {exc.reason or exc}") from exc
            else:
                await self._flush()
                return result

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._call(self._ssl.read, max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._eof_sent:
            raise anyio.ClosedResourceError
        await self._call(self._ssl.write, item)

    async def send_eof(self) -> None:
        """Send close_notify; the visitor may still send (and we still read)."""
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is out; theirs comes when the visitor is done
        except ssl.SSLError as exc:
            raise anyio.BrokenResourceError(f"TLS: {exc.reason or exc}") from exc
        await self._flush()

    async def aclose(self) -> None:
        await self.transport.aclose()

    def reset(self) -> None:
        """Make the coming `aclose` abortive, when the transport knows how."""
        reset = getattr(self.transport, "reset", None)
        if callable(reset):
            reset()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport.extra_attributes
