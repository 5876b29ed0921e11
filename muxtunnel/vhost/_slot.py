"""The one upstream connection a visitor connection keeps between its requests.

Invariants: at most one upstream per visitor connection; it is reused only for the same
route target, never for a `per_request` one, and only while h11 says both sides kept it alive
and no watch saw it close; whoever takes it out of the slot (`take`) owns closing it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import anyio

from muxtunnel.transport import abort
from muxtunnel.vhost._exchange import (
    IO_ERRORS,
    UpstreamBroken,
    UpstreamBusy,
    UpstreamConnection,
    UpstreamSlow,
)
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.routes import Route
from muxtunnel.vhost.upstream import (
    Upstream,
    UpstreamRefused,
    UpstreamUnavailable,
    Visitor,
    open_service,
)

__all__ = ["UpstreamSlot"]


class UpstreamSlot:
    """Holds, reuses, opens and closes the upstream of one visitor connection."""

    __slots__ = ("_watch", "config", "current", "upstream", "visitor")

    def __init__(self, upstream: Upstream, visitor: Visitor, config: VhostConfig) -> None:
        self.upstream = upstream
        self.visitor = visitor
        self.config = config
        self.current: UpstreamConnection | None = None
        self._watch: _IdleWatch | None = None

    async def acquire(
        self, route: Route, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> UpstreamConnection:
        """The kept upstream if it serves `route`'s target and is alive, else a new one (a
        `per_request` route's upstream sees the request's `headers`).

        Raises `UpstreamSlow` (opening timed out: 504), `UpstreamBusy` (429) or
        `UpstreamBroken` (502).
        """
        up = self.current
        per_request = route.target.options.per_request
        if up is not None:
            if not up.dead and up.target == route.target and not per_request:
                up.reused = True
                return up
            await self.drop(abortive=False)
        visitor = replace(self.visitor, headers=headers) if per_request else self.visitor
        try:
            stream = await open_service(self.upstream, route.target, visitor, self.config)
        except TimeoutError:
            raise UpstreamSlow("opening a stream to the service timed out") from None
        except UpstreamRefused as exc:
            raise UpstreamBusy(str(exc), exc.retry_after) from None
        except UpstreamUnavailable as exc:
            raise UpstreamBroken(f"the service is unavailable: {exc}") from None
        self.current = up = UpstreamConnection(
            stream, route.target, self.config.max_response_header_bytes
        )
        return up

    def take(self) -> UpstreamConnection | None:
        """Take the upstream out of the slot (a raw pipe will own it)."""
        up, self.current = self.current, None
        return up

    async def drop(self, *, abortive: bool) -> None:
        """Close the kept upstream: a reset (`abortive`) when the service must see a failure."""
        up = self.take()
        if up is None:
            return
        with anyio.CancelScope(shield=True):
            if abortive:
                await abort(up.stream)
            else:
                try:
                    await up.stream.aclose()
                except IO_ERRORS:
                    pass

    async def while_watching(self, wait: Callable[[], Awaitable[int]], after_s: float) -> int:
        """Run `wait` (the visitor's idle receive); once it has waited `after_s`, read the
        kept upstream meanwhile: whatever comes (EOF, a reset, bytes, which would break HTTP)
        means it is no longer fit for another request.

        The watch is a task of its own, started by a loop timer (`_IdleWatch`): a cancel scope
        per request around `wait` cost ~8 us of a ~120 us keep-alive request, while a visitor
        that sends its next request within `after_s` (the usual keep-alive pace) costs here a
        float store and, at most every `after_s`, a timer.
        """
        up = self.current
        if up is None:
            return await wait()
        watch = self._watch
        if watch is None:
            watch = self._watch = _IdleWatch()
        watch.arm(up, after_s)
        try:
            return await wait()
        finally:
            await watch.disarm()


class _IdleWatch:
    """A lazily re-armed loop timer that starts a task reading an idle kept upstream."""

    __slots__ = ("_at", "_handle", "_handle_at", "_loop", "_task", "_up")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf
        self._at = math.inf  # inf: disarmed
        self._up: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def arm(self, up: UpstreamConnection, after_s: float) -> None:
        self._up = up
        self._at = at = self._loop.time() + after_s
        if self._handle is None or at < self._handle_at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(at, self._fire)
            self._handle_at = at

    async def disarm(self) -> None:
        """Stop watching (the visitor spoke, or the connection ends); waits for the task."""
        self._at = math.inf
        self._up = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))  # it must leave the stream before anyone reads it

    def _fire(self) -> None:
        self._handle = None
        self._handle_at = math.inf
        if self._at == math.inf or self._up is None:
            return  # disarmed: the timer stays off until the next `arm`
        if self._loop.time() < self._at:
            self._handle = self._loop.call_at(self._at, self._fire)
            self._handle_at = self._at
            return
        self._at = math.inf
        self._task = self._loop.create_task(_watch(self._up))


async def _watch(up: UpstreamConnection) -> None:
    try:
        await up.stream.receive(1)
    except asyncio.CancelledError:
        return  # the visitor spoke first: the upstream is as good as before
    except (anyio.EndOfStream, *IO_ERRORS):
        pass
    up.dead = True
