"""Small ByteStream helpers: replaying bytes already read, closing politely."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from muxtunnel.vhost.counters import ServiceCounters

__all__ = ["CountingStream", "PrefixedStream", "linger_close"]

_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class PrefixedStream(anyio.abc.ByteStream):
    """`inner`, except that `receive` first returns `prefix` (bytes read ahead, now replayed).

    `prefix_eof`: the peer had already ended its side after the prefix (h11's `trailing_data`).
    Everything else, including `reset` for `transport.abort`, goes to `inner`.
    """

    def __init__(
        self, inner: anyio.abc.ByteStream, prefix: bytes, prefix_eof: bool = False
    ) -> None:
        self.inner = inner
        self._prefix = prefix
        self._eof = prefix_eof

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        if self._eof:
            raise anyio.EndOfStream
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def reset(self) -> None:
        """Make the coming `aclose` abortive, when `inner` knows how."""
        reset = getattr(self.inner, "reset", None)
        if callable(reset):
            reset()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


class CountingStream(PrefixedStream):
    """A visitor's stream in a raw pipe: bytes counted into a service's counters as they pass
    (received: towards the service, `bytes_in`; sent: `bytes_out`), so readers see live
    figures while a long WebSocket or TLS connection runs."""

    def __init__(
        self,
        inner: anyio.abc.ByteStream,
        prefix: bytes,
        prefix_eof: bool,
        counters: ServiceCounters,
    ) -> None:
        super().__init__(inner, prefix, prefix_eof)
        self.counters = counters

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await super().receive(max_bytes)
        self.counters.bytes_in += len(data)
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)
        self.counters.bytes_out += len(item)


async def linger_close(stream: anyio.abc.ByteStream, *, timeout_s: float, max_bytes: int) -> None:
    """Half-close, then read and discard for a while before closing.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    response we just sent before the visitor reads it (the "lingering close" of Apache and
    nginx). Bounded in time and bytes, so a visitor that keeps sending cannot hold us.
    """
    with anyio.CancelScope(shield=True):
        try:
            with anyio.move_on_after(timeout_s):
                await stream.send_eof()
                drained = 0
                while drained < max_bytes:
                    drained += len(await stream.receive())
        except (anyio.EndOfStream, *_IO_ERRORS):
            pass
        try:
            await stream.aclose()
        except _IO_ERRORS:
            pass
