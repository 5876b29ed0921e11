"""Copy bytes both ways between two byte streams, as TCP would between its two ends.

- Each direction runs until its source ends; EOF is forwarded with `send_eof` (half-close), and
  the other direction carries on until it ends too (unlike a race of the two copies, which cuts
  in-flight bytes of the slower direction).
- A failure on either side (reset, broken carrier) aborts both: a TCP peer gets RST, a mux
  stream gets RST. Nobody sees a clean EOF after bytes were lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import anyio.abc

from muxtunnel.transport import abort

#: Bytes asked per read. Large reads mean fewer trips through the event loop per megabyte.
CHUNK_BYTES = 256 * 1024

#: How a stream fails (`transport` maps the socket layer's own errors to these).
_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


@dataclass(slots=True)
class PipeResult:
    #: Bytes copied from the first stream to the second, and back.
    forward_bytes: int = 0
    backward_bytes: int = 0
    #: Why the pipe was aborted, or None if both directions ended with EOF.
    error: str | None = None


async def pipe(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> PipeResult:
    """Copy a→b and b→a until both have ended; then close both. Never raises for I/O errors."""
    result = PipeResult()
    finished = 0

    async def copy(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, forward: bool) -> None:
        nonlocal finished
        try:
            while True:
                try:
                    data = await source.receive(CHUNK_BYTES)
                except anyio.EndOfStream:
                    break
                if forward:
                    result.forward_bytes += len(data)
                else:
                    result.backward_bytes += len(data)
                await sink.send(data)
            await sink.send_eof()
            finished += 1
        except _FAILURES as exc:
            if result.error is None:
                result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(copy, a, b, True)
            tg.start_soon(copy, b, a, False)
    finally:
        # Cancelled from outside, or one side failed: both ends must see a failure, not an EOF.
        with anyio.CancelScope(shield=True):
            if finished < 2:
                if result.error is None:
                    result.error = "cancelled"
                await abort(a)
                await abort(b)
            else:
                for stream in (a, b):
                    try:
                        await stream.aclose()
                    except _FAILURES:
                        pass
    return result
