"""The virtual-host engine: routes, limits and counters shared by all visitor connections.

The server creates one `VhostEngine` (with its `Upstream`), adds and removes routes as
clients register services, and hands every accepted connection of the HTTP port to
`serve_http` and of the TLS port to `serve_tls`. Each of those is a barrier: whatever goes
wrong inside one connection stays there (counted, logged at doubling counts, the visitor
reset), so an accept loop can call them without guarding.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import anyio.abc
import structlog

from muxtunnel.transport import abort
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.counters import CountersSnapshot, VhostCounters
from muxtunnel.vhost.http import HttpConnection
from muxtunnel.vhost.limits import OnceSet, SourceLimiter
from muxtunnel.vhost.routes import RouteTable
from muxtunnel.vhost.tls_front import serve_tls_connection
from muxtunnel.vhost.upstream import Upstream, Visitor

__all__ = ["VhostEngine"]

log = structlog.get_logger("muxtunnel.vhost")


class VhostEngine:
    """Serves visitor connections of the shared HTTP and TLS ports."""

    def __init__(
        self,
        upstream: Upstream,
        config: VhostConfig | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config if config is not None else VhostConfig()
        self.upstream = upstream
        self.counters = VhostCounters()
        #: Routes of HTTP services (plain HTTP, and TLS terminated here).
        self.http_routes = RouteTable(self.counters)
        #: Routes of TLS passthrough services, by SNI (locations do not apply).
        self.tls_routes = RouteTable(self.counters)
        self.limiter = SourceLimiter(
            self.config.max_connections_per_source, self.config.max_sources
        )
        #: Certificate for terminating TLS (`tls_front.server_tls_context`); None: passthrough
        #: only. Replace it at any time (a reload): new connections use the new one.
        self.tls_context = tls_context
        self.unknown_names = OnceSet(self.config.unknown_names_remembered)

    async def serve_http(
        self, stream: anyio.abc.ByteStream, visitor: Visitor | None = None
    ) -> None:
        """Serve one visitor connection of the HTTP port until it ends; never raises."""
        visitor = visitor or Visitor.of(stream, "http")
        await self._serve(stream, visitor, HttpConnection(self, stream, visitor).run)

    async def serve_tls(self, stream: anyio.abc.ByteStream, visitor: Visitor | None = None) -> None:
        """Serve one visitor connection of the TLS port until it ends; never raises."""
        visitor = visitor or Visitor.of(stream, "https")

        async def run() -> None:
            await serve_tls_connection(self, stream, visitor)

        await self._serve(stream, visitor, run)

    def snapshot(self) -> CountersSnapshot:
        """All counters, frozen."""
        return self.counters.snapshot()

    async def _serve(
        self, stream: anyio.abc.ByteStream, visitor: Visitor, run: Callable[[], Awaitable[None]]
    ) -> None:
        ticket = self.limiter.acquire(visitor.host)
        if ticket is None:
            reason = "too_many_from_source"
            if self.limiter.live(visitor.host) < self.limiter.per_source:
                reason = "too_many_sources"
            self.counters.refuse(reason)
            await abort(stream)
            return
        self.counters.connections += 1
        try:
            await run()
        except Exception as exc:  # the barrier: a bug here must not reach the accept loop
            self.counters.internal_errors += 1
            count = self.counters.internal_errors
            if count & (count - 1) == 0:
                log.error("vhost connection failed", count=count, visitor=visitor.host,
                          error=repr(exc), exc_info=exc)  # fmt: skip
            await abort(stream)
        finally:
            self.limiter.release(ticket)
