"""Compressed visitor streams: a zstd `ByteStream` wrapper around a mux stream.

Each side compresses what it sends and decompresses what it receives, as one zstd stream per
direction. Every `send` is flushed to a block boundary before it goes out, so compression never
holds bytes back (an interactive protocol sees every write as soon as without compression); the
cost is a few bytes per write. EOF (`send_eof`) and resets pass through unchanged: the frame is
simply never finished, which the receiver does not need.

Compressed input from the peer is decompressed in slices of `_SLICE_BYTES`, bounding what one
slice can expand to; only an authenticated peer (it holds the service's token) can send it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import zstandard

__all__ = ["ALGORITHMS", "CompressedStream", "compression_ratio"]

#: Algorithms a service may ask for; the only one is zstd.
ALGORITHMS = ("zstd",)
#: Compressed bytes handed to the decompressor at once. Typical data expands 2-10x per slice.
_SLICE_BYTES = 16 * 1024
#: Largest window a peer may make us keep (zstd's default for levels up to 19 is at most 8 MiB).
_MAX_WINDOW_BYTES = 8 * 1024 * 1024


class CompressedStream(anyio.abc.ByteStream):
    """Wraps a `ByteStream`: sends are zstd-compressed (flushed per send), receives decompressed."""

    def __init__(self, inner: anyio.abc.ByteStream, level: int = 3) -> None:
        self.inner = inner
        self._compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self._decompressor = zstandard.ZstdDecompressor(
            max_window_size=_MAX_WINDOW_BYTES
        ).decompressobj()
        self._pending = b""  # compressed bytes received but not decompressed yet
        self._ready = bytearray()  # decompressed bytes not handed out yet
        #: Bytes on the wire (compressed) and as the application sees them, each way.
        self.wire_sent = self.wire_received = 0
        self.plain_sent = self.plain_received = 0

    async def send(self, item: bytes) -> None:
        data = self._compressor.compress(item)
        data += self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.plain_sent += len(item)
        self.wire_sent += len(data)
        await self.inner.send(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._ready:
            if not self._pending:
                self._pending = await self.inner.receive(max(max_bytes, _SLICE_BYTES))
                self.wire_received += len(self._pending)
            piece, self._pending = self._pending[:_SLICE_BYTES], self._pending[_SLICE_BYTES:]
            try:
                self._ready += self._decompressor.decompress(piece)
            except zstandard.ZstdError as exc:
                raise anyio.BrokenResourceError(f"corrupt compressed stream: {exc}") from None
        data = bytes(self._ready[:max_bytes])
        del self._ready[:max_bytes]
        self.plain_received += len(data)
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def reset(self) -> None:
        """Abort both ways (what `transport.abort` calls on mux streams)."""
        reset: Callable[[], None] | None = getattr(self.inner, "reset", None)
        if reset is not None:
            reset()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


def compression_ratio(data: bytes, level: int = 3, write_bytes: int = 64 * 1024) -> float:
    """Plain / wire bytes for `data` written in `write_bytes` pieces (for benchmarks and docs)."""
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    wire = 0
    for offset in range(0, len(data), write_bytes):
        wire += len(compressor.compress(data[offset : offset + write_bytes]))
        wire += len(compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    return len(data) / max(wire, 1)
