"""Compressed visitor streams: a zstd `ByteStream` wrapper around a mux stream.

Each side compresses what it sends and decompresses what it receives, as one zstd stream per
direction. Every `send` is flushed to a block boundary before it goes out, so compression never
holds bytes back (an interactive protocol sees every write as soon as without compression); the
cost is a few bytes per write. EOF (`send_eof`) and resets pass through unchanged: the frame is
simply never finished, which the receiver does not need.

Decompression is bounded: `_OutputBound` reads zstd's block headers as the bytes go by (each
block says, or caps at 128 KiB, how much it regenerates) and hands the decompressor at most about
`_OUTPUT_BUDGET_BYTES` worth of blocks at a time, so a small input crafted to expand hugely
costs no more memory than an honest one. Only an authenticated peer (it holds the service's
token) can send compressed bytes at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL

if TYPE_CHECKING:
    # Imported where a compressed stream first compresses, decompresses or is budgeted: a
    # process whose services do not compress never loads zstd.
    import zstandard

__all__ = ["ALGORITHMS", "CompressedStream", "compression_ratio", "stream_memory_bytes"]

#: Algorithms a service may ask for; the only one is zstd.
ALGORITHMS = ("zstd",)
#: Decompressed bytes one call may produce (plus at most one block beyond it).
_OUTPUT_BUDGET_BYTES = 1024 * 1024
#: zstd: the frame's magic number, and the most a compressed block regenerates (Block_Maximum_Size).
_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX_BYTES = 128 * 1024
_RECEIVE_BYTES = 256 * 1024
#: Largest window a peer may make us keep (zstd's default for levels up to 19 is at most 8 MiB).
_MAX_WINDOW_BYTES = 8 * 1024 * 1024


class _OutputBound:
    """Follows the structure of one zstd frame to bound what a prefix of it decompresses to.

    `take(data, budget)` returns how many bytes of `data` (the next compressed bytes) may be fed
    to the decompressor so that they regenerate at most `budget` plus one block. Input that is
    not a zstd frame raises `ValueError`.
    """

    def __init__(self) -> None:
        self._phase = "frame"  # frame header, then "block" headers, then "done"
        self._head = bytearray()  # header bytes seen so far
        self._need = 5  # header bytes needed: magic + descriptor, then the rest of it, then 3
        self._body = 0  # bytes left in the current block's body
        self._last = False

    def take(self, data: bytes, budget: int) -> int:
        used, output = 0, 0
        while used < len(data):
            if self._body:
                step = min(self._body, len(data) - used)
                used += step
                self._body -= step
                if not self._body and self._last:
                    self._phase = "done"
                continue
            if self._phase == "done":  # after the last block: a checksum, nothing to regenerate
                return len(data)
            if self._phase == "block" and not self._head and output >= budget:
                break
            step = min(self._need - len(self._head), len(data) - used)
            self._head += data[used : used + step]
            used += step
            if len(self._head) == self._need:
                output += self._header_done()
        return used

    def _header_done(self) -> int:
        head = self._head
        if self._phase == "frame" and self._need == 5:
            if head[:4] != _MAGIC:
                raise ValueError("not a zstd frame")
            descriptor = head[4]
            single = descriptor >> 5 & 1
            extra = (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
            extra += (single, 2, 4, 8)[descriptor >> 6]
            if extra:
                self._need = 5 + extra
                return 0
        if self._phase == "frame":
            self._phase, self._need = "block", 3
            head.clear()
            return 0
        value = int.from_bytes(head, "little")
        head.clear()
        self._last = bool(value & 1)
        kind, size = value >> 1 & 3, value >> 3
        if kind == 3:
            raise ValueError("reserved zstd block type")
        self._body = 1 if kind == 1 else size  # RLE: one byte, repeated `size` times
        if not self._body and self._last:
            self._phase = "done"
        return _BLOCK_MAX_BYTES if kind == 2 else size


def stream_memory_bytes(level: int) -> int:
    """What one compressed stream may hold at `level`, both directions: zstd's own estimate of
    a compression context, a decompression context, and the window of a peer's frames at the
    same level (what a session's compression budget is charged per stream)."""
    import zstandard

    parameters = zstandard.ZstdCompressionParameters.from_level(level)
    return (
        parameters.estimated_compression_context_size()
        + zstandard.estimate_decompression_context_size()
        + (1 << parameters.window_log)
    )


class CompressedStream(anyio.abc.ByteStream):
    """Wraps a `ByteStream`: sends are zstd-compressed (flushed per send), receives decompressed.

    Each direction's zstd context is made on its first bytes: a visitor that never sends (or is
    never answered) costs no context that way.
    """

    def __init__(self, inner: anyio.abc.ByteStream, level: int = DEFAULT_COMPRESSION_LEVEL) -> None:
        self.inner = inner
        self.level = level
        self._compressor: zstandard.ZstdCompressionObj | None = None
        self._decompressor: zstandard.ZstdDecompressionObj | None = None
        self._bound = _OutputBound()
        self._pending = b""  # compressed bytes received but not decompressed yet
        self._ready = bytearray()  # decompressed bytes not handed out yet
        #: Bytes on the wire (compressed) and as the application sees them, each way.
        self.wire_sent = self.wire_received = 0
        self.plain_sent = self.plain_received = 0

    async def send(self, item: bytes) -> None:
        import zstandard  # a lookup in sys.modules after the first: ~0.1 us a send

        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zstandard.ZstdCompressor(level=self.level).compressobj()
        data = compressor.compress(item)
        data += compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.plain_sent += len(item)
        self.wire_sent += len(data)
        await self.inner.send(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        import zstandard

        while not self._ready:
            if not self._pending:
                self._pending = await self.inner.receive(_RECEIVE_BYTES)
                self.wire_received += len(self._pending)
            decompressor = self._decompressor
            if decompressor is None:
                decompressor = self._decompressor = zstandard.ZstdDecompressor(
                    max_window_size=_MAX_WINDOW_BYTES
                ).decompressobj()
            try:
                size = self._bound.take(self._pending, _OUTPUT_BUDGET_BYTES)
                piece, self._pending = self._pending[:size], self._pending[size:]
                self._ready += decompressor.decompress(piece)
            except (ValueError, zstandard.ZstdError) as exc:
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


def compression_ratio(
    data: bytes, level: int = DEFAULT_COMPRESSION_LEVEL, write_bytes: int = 64 * 1024
) -> float:
    """Plain / wire bytes for `data` written in `write_bytes` pieces (for benchmarks and docs)."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    wire = 0
    for offset in range(0, len(data), write_bytes):
        wire += len(compressor.compress(data[offset : offset + write_bytes]))
        wire += len(compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    return len(data) / max(wire, 1)
