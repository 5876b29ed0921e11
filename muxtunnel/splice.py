"""Two mux streams spliced both ways by callbacks, not tasks: a private service's two hops.

A visitor of a private service reaches the server on a stream of its `visit` session, and
the server opens a stream for it on the provider's session. `proxy.pipe` would copy between
them with a task per direction (each chunk wakes a task, which receives, then sends). A
`Splice` attaches a consumer (`mux.StreamConsumer`) to each stream instead: the bytes one
session's reader hands to a stream are queued on the other stream in the same callback.

It keeps `pipe`'s promises, as `relay.Relay` keeps them for a socket:

1. Both ways run until their source ends; an EOF is passed on as a FIN on the other stream
   (after the bytes queued before it), and the other way carries on.
2. A failure of either stream (reset, its session ended, a write refused) resets both: nobody
   sees a clean EOF after bytes were lost.
3. Memory stays bounded by the two windows: credit for a chunk goes back to its sender only
   while the receiving stream's send buffer is below its mark (`MuxStream.write` says so);
   past it the credit waits until that buffer drains (`stream_writable`). So a stream whose
   reader stalls holds at most its send buffer mark plus the other stream's receive window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from mux import MuxStream
from muxtunnel.limits import ConnectionMeter
from muxtunnel.proxy import PipeResult

__all__ = ["Splice"]

_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _Way:
    """One direction: the consumer of `source`, writing into `target`."""

    __slots__ = ("ended", "forward", "reverse", "source", "splice", "target", "withheld")

    def __init__(
        self, splice: Splice, source: MuxStream, target: MuxStream, *, forward: bool
    ) -> None:
        self.splice = splice
        self.source = source
        self.target = target
        #: True for the visitor's way (towards the service).
        self.forward = forward
        #: The other direction (its target is our source).
        self.reverse: _Way = self
        #: Bytes passed on to `target` whose credit waits for `target` to drain below its mark.
        self.withheld = 0
        self.ended = False  # the source's EOF went on to the target

    # -- mux.StreamConsumer of `source`

    def stream_data(self, data: memoryview) -> None:
        splice = self.splice
        if splice.finished:
            return
        size = len(data)
        splice.count(size, forward=self.forward)
        try:
            room = self.target.write(data, more=True)  # the view, not a copy (reads are fresh)
        except _FAILURES as exc:
            splice.fail(exc)
            return
        if room:
            credit, self.withheld = self.withheld + size, 0
            self.source.consumed(credit)
        else:
            self.withheld += size

    def stream_eof(self) -> None:
        splice = self.splice
        if splice.finished or self.ended:
            return
        try:
            self.target.write_eof()
        except _FAILURES as exc:
            splice.fail(exc)
            return
        self.ended = True
        splice.finish_if_done()

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        self.splice.fail(error)

    def stream_writable(self) -> None:
        # `source`'s send buffer drained: the way writing into it may give its credit back.
        self.reverse.release()

    def release(self) -> None:
        credit, self.withheld = self.withheld, 0
        if credit and not self.splice.finished:
            self.source.consumed(credit)


class Splice:
    """Splices a visitor's stream and its service's stream; `run` returns once both ways
    have ended or one failed (see the module doc)."""

    def __init__(self, visitor: MuxStream, service: MuxStream, meter: ConnectionMeter) -> None:
        self.meter = meter
        self.result = PipeResult()
        self.finished = False
        self._inbound = _Way(self, visitor, service, forward=True)
        self._outbound = _Way(self, service, visitor, forward=False)
        self._inbound.reverse, self._outbound.reverse = self._outbound, self._inbound
        self._done = anyio.Event()
        try:  # the idle clock's (anyio's: the loop's)
            self._time: Callable[[], float] = asyncio.get_running_loop().time
        except RuntimeError:  # not asyncio
            self._time = anyio.current_time

    async def run(self) -> PipeResult:
        """Splice until both ways have ended or one failed; a cancelled caller resets both."""
        # Bytes either stream holds already (a visitor's first bytes) go on at once.
        self._inbound.source.attach(self._inbound)
        if not self.finished:
            self._outbound.source.attach(self._outbound)
        try:
            await self._done.wait()
        finally:
            if not self.finished:
                self.fail("cancelled")
        return self.result

    def count(self, size: int, *, forward: bool) -> None:
        """Meter `size` bytes one way (the visitor's bytes are `bytes_in`)."""
        meter = self.meter
        meter.last_active = self._time()
        if forward:
            self.result.forward_bytes += size
            meter.bytes_in += size
        else:
            self.result.backward_bytes += size
            meter.bytes_out += size

    def finish_if_done(self) -> None:
        """Both ways ended cleanly: the streams are done (the sessions forget them)."""
        if self._inbound.ended and self._outbound.ended:
            self.finished = True
            self._done.set()

    def fail(self, error: BaseException | str) -> None:
        """Reset both streams, once."""
        if self.finished:
            return
        self.finished = True
        self.result.error = _describe(error)
        self._inbound.source.reset()
        self._outbound.source.reset()
        self._done.set()
