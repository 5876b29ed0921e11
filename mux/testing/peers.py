"""A peer driven by hand, for tests that need one to misbehave in ways a `Session` never would."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from mux.testing.frames import Frame, FrameReader

__all__ = ["RawPeer"]


class RawPeer:
    """A hand-driven peer on the far end of a carrier: writes raw frames, reads decoded ones.

    For tests that need a peer to misbehave in ways a `Session` never would.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        #: Every frame read so far, in order.
        self.frames: list[Frame] = []
        #: True once the carrier ended (EOF, reset or closed).
        self.closed = False

    async def send(self, *frames: bytes) -> None:
        await self.stream.send(b"".join(frames))

    async def read(self) -> list[Frame]:
        """One carrier read, decoded (empty once the carrier has ended)."""
        if self.closed:
            return []
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.closed = True
            return []
        frames = self.reader.feed(data)
        self.frames += frames
        return frames

    async def expect(self, predicate: Callable[[Frame], bool], timeout_s: float = 5.0) -> Frame:
        """Read until a frame matches (frames that do not are kept in `frames`)."""
        with anyio.fail_after(timeout_s):
            while not self.closed:
                for frame in await self.read():
                    if predicate(frame):
                        return frame
        raise AssertionError(f"the carrier ended first; frames were {self.frames[-10:]!r}")

    async def read_until_closed(self, timeout_s: float = 5.0) -> list[Frame]:
        """Read until the carrier ends; returns every frame read so far."""
        with anyio.fail_after(timeout_s):
            while not self.closed:
                await self.read()
        return self.frames
