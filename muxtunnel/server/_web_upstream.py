"""How a web visitor reaches a service: the stream `WebFront.open` hands the vhost engine.

- `ServiceStream`: a visitor's stream to a web service (the mux stream to the client holding
  it, or a `BalancedStream` to a group's member), metered, throttled, compressed if agreed,
  counted among the service's visitors until it is closed.
- `admit`: the service's rate limits for one request (per upstream of a `per_request` route):
  a refusal is `UpstreamRefused`, which the engine answers with 429 and `Retry-After`.
- `open_member`: a request of a load-balanced group, given to the member the group picks:
  by the visitor's address for `hash_source`, by the named header for `hash_header:NAME`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from muxtunnel.balance.ratelimit import Admission, Refusal, VisitorLimiter
from muxtunnel.balance.settings import Policy, PolicyKind
from muxtunnel.compress import CompressedStream
from muxtunnel.forward import Visitors
from muxtunnel.limits import MeteredStream, ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.server._balanced import BalancedStream
from muxtunnel.server._registry import GroupService
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.vhost import UpstreamRefused, UpstreamUnavailable, Visitor

__all__ = ["ServiceStream", "admit", "balance_key", "open_member"]


class ServiceStream(MeteredStream):
    """A visitor's stream to a web service; `on_close` runs once it is closed."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        name: str,
        *,
        compression_level: int | None,
        traffic: ServiceTraffic,
        limiter: ServiceLimiter,
        peer: str,
        in_flight: Visitors,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if compression_level is not None:
            stream = CompressedStream(stream, compression_level)
        self._traffic = traffic
        meter = traffic.open(name, peer)
        super().__init__(
            stream,
            meter,
            receive_is_in=False,
            receive_bucket=limiter.outbound,
            send_bucket=limiter.inbound,
        )
        self._tracked = contextlib.ExitStack()
        self._tracked.enter_context(in_flight.track())
        if on_close is not None:
            self._tracked.callback(on_close)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self._traffic.close(self.meter)
            self._tracked.close()


def admit(limiter: VisitorLimiter | None, name: str, visitor: Visitor) -> Admission | None:
    """The admission of one request (None: the service has no rate limits); `UpstreamRefused`
    when the limits refuse it (counted and logged by the limiter)."""
    if limiter is None:
        return None
    answer = limiter.admit(address_key(visitor.host), anyio.current_time())
    if isinstance(answer, Refusal):
        raise UpstreamRefused(
            f"service {name!r} refused a visitor: {answer.reason.value}", answer.retry_after_header
        )
    return answer


def balance_key(policy: Policy, visitor: Visitor) -> str | bytes | None:
    """What a hashing policy hashes for this request (None: none, round robin)."""
    if policy.kind is PolicyKind.HASH_SOURCE:
        return address_key(visitor.host)
    if policy.kind is PolicyKind.HASH_HEADER and policy.header is not None:
        return _header(visitor.headers, policy.header.encode())
    return None


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def open_member(
    group: GroupService,
    visitor: Visitor,
    *,
    traffic: ServiceTraffic,
    limiter: ServiceLimiter,
    admission: Admission | None,
    refusals: Refusals | None = None,
) -> ServiceStream:
    """A request's stream to the member its group picks (`UpstreamUnavailable`: none can
    take it). The admission is released when the stream closes."""
    key = balance_key(group.group.settings.policy, visitor)

    def retried() -> None:
        group.retries_total += 1

    peer = (visitor.host, visitor.port)
    stream = BalancedStream(group.group, peer, key, on_retry=retried, refusals=refusals)
    try:
        started = await stream.start()
    except BaseException:
        if admission is not None:
            admission.release()
        raise
    if not started:
        group.visitor_failed("no member available")
        if admission is not None:
            admission.release()
        raise UpstreamUnavailable(f"no member of group {group.name!r} is available")

    def closed() -> None:
        if stream.failed:
            group.visitor_failed("every dial it was given failed")
        if admission is not None:
            admission.release()

    return ServiceStream(
        stream, group.name, compression_level=None, traffic=traffic, limiter=limiter,
        peer=format_host_port(visitor.host, visitor.port), in_flight=group.in_flight,
        on_close=closed,
    )  # fmt: skip
