"""The one upstream connection a visitor connection keeps between its requests.

Invariants: at most one upstream per visitor connection; it is reused only for the same
route target, never for a `per_request` one, and only while h11 says both sides kept it alive
and no watch saw it close; whoever takes it out of the slot (`take`) owns closing it.
"""

from __future__ import annotations

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

    __slots__ = ("config", "current", "upstream", "visitor")

    def __init__(self, upstream: Upstream, visitor: Visitor, config: VhostConfig) -> None:
        self.upstream = upstream
        self.visitor = visitor
        self.config = config
        self.current: UpstreamConnection | None = None

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

    async def while_watching(self, wait: Callable[[], Awaitable[int]]) -> int:
        """Run `wait` while reading the kept upstream: whatever comes (EOF, a reset, bytes,
        which would break HTTP) means it is no longer fit for another request."""
        up = self.current
        if up is None:
            return await wait()

        async def watch() -> None:
            try:
                await up.stream.receive(1)
            except (anyio.EndOfStream, *IO_ERRORS):
                pass
            up.dead = True

        size = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                size = await wait()
            finally:
                tg.cancel_scope.cancel()
        return size
