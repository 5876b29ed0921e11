"""Who a visitor is, and the one interface the engine needs to reach a service.

The engine never dials anything itself: it asks an `Upstream` for a byte stream to the
service a route names. In `listen` that is a mux stream to the client holding the service
(the client then dials its local port); `DirectUpstream` dials TCP addresses itself (tests,
benchmarks, services local to the server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import anyio
import anyio.abc

from muxtunnel.transport import TransportError, abort, connect, local_address, peer_address
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.proxy_protocol import encode_proxy_header
from muxtunnel.vhost.routes import RouteTarget

__all__ = [
    "DirectUpstream",
    "Upstream",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "Visitor",
    "open_service",
]


class UpstreamUnavailable(Exception):
    """The service cannot be reached now (client offline, local dial failed): a 502."""


class UpstreamRefused(UpstreamUnavailable):
    """The service takes no new visitor now (its rate limits): a 429 with `Retry-After`."""

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        #: The `Retry-After` value: whole seconds.
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Visitor:
    """The public side of one visitor connection."""

    host: str
    port: int
    #: Our address the visitor connected to (the destination of a PROXY protocol header).
    local_host: str = "0.0.0.0"
    local_port: int = 0
    #: What the visitor speaks to us: `https` once TLS is terminated here.
    scheme: Literal["http", "https"] = "http"
    #: The headers of the request being routed, for a route that opens its upstream per
    #: request (`RouteOptions.per_request`: a load-balanced group may hash one of them).
    headers: Sequence[tuple[bytes, bytes]] = ()
    #: Handed over by another node of our cluster, whose engine set the forwarded headers
    #: (X-Forwarded-*, Forwarded) already: they go to the service as they came.
    relayed: bool = False
    #: Handed over by another node of our cluster: served here, handed on again only when its
    #: group has no usable member here, and only once (`handed_on`).
    from_node: bool = False
    #: Handed on by a second node already: served here whatever happens.
    handed_on: bool = False

    @classmethod
    def of(cls, stream: anyio.abc.ByteStream, scheme: Literal["http", "https"] = "http") -> Visitor:
        """The visitor at the other end of a socket stream (placeholders for other streams)."""
        remote, local = peer_address(stream), local_address(stream)
        if remote is None or local is None:  # no socket, or gone already: nobody to answer
            return cls("unknown", 0, scheme=scheme)
        return cls(remote[0], remote[1], local[0], local[1], scheme)

    def with_scheme(self, scheme: Literal["http", "https"]) -> Visitor:
        return replace(self, scheme=scheme)


class Upstream(Protocol):
    """Opens byte streams to services; the engine calls it once per upstream connection."""

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        """A fresh stream to `target.service` for `visitor`.

        Raise `UpstreamUnavailable` (or let `OSError`, `TransportError`, anyio's broken and
        closed errors out) when the service cannot be reached: the visitor gets a 502;
        `UpstreamRefused` when it takes no new visitor now: a 429. A
        stream that opens but fails before the response head (the client's local dial failed
        and it reset the stream) is a 502 as well.
        """
        ...


class DirectUpstream:
    """An `Upstream` that dials a TCP address per service name."""

    def __init__(
        self, addresses: Mapping[str, tuple[str, int]], *, timeout_s: float = 10.0
    ) -> None:
        self.addresses = dict(addresses)
        self.timeout_s = timeout_s

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        address = self.addresses.get(target.service)
        if address is None:
            raise UpstreamUnavailable(f"service {target.service!r} has no address")
        try:
            return await connect(address[0], address[1], timeout_s=self.timeout_s)
        except TransportError as exc:
            raise UpstreamUnavailable(str(exc)) from None


_OPEN_ERRORS = (
    UpstreamUnavailable,
    TransportError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


async def open_service(
    upstream: Upstream, target: RouteTarget, visitor: Visitor, config: VhostConfig
) -> anyio.abc.ByteStream:
    """A stream to `target`'s service, its PROXY header (if the route wants one) sent.

    Raises `TimeoutError` past `upstream_open_timeout_s` (a 504), `UpstreamRefused` as the
    `Upstream` raised it (a 429), and `UpstreamUnavailable` for every other failure (a 502).
    """
    try:
        with anyio.fail_after(config.upstream_open_timeout_s):
            stream = await upstream.open(target, visitor)
    except UpstreamRefused:
        raise
    except _OPEN_ERRORS as exc:
        raise UpstreamUnavailable(str(exc) or type(exc).__name__) from None
    version = target.options.proxy_protocol
    if version is not None:
        header = encode_proxy_header(
            version, (visitor.host, visitor.port), (visitor.local_host, visitor.local_port)
        )
        try:
            with anyio.fail_after(config.send_timeout_s):
                await stream.send(header)
        except (TimeoutError, *_OPEN_ERRORS) as exc:
            await abort(stream)
            raise UpstreamUnavailable(f"sending the PROXY header failed: {exc!r}") from None
    return stream
