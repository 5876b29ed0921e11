"""A load-balancing group's TCP visitors, and its status rows.

A visitor is admitted (the service's connection cap, then its rate limits: a refused one gets a
reset) and handed to `BalancedStream`, which gives it to the member the group picks and
replays it once on another member if that one's dial fails; `forward` then meters, throttles
and pipes it as any TCP visitor.
"""

from __future__ import annotations

import anyio
import anyio.abc

from muxtunnel.balance.ratelimit import Refusal
from muxtunnel.balance.settings import PolicyKind
from muxtunnel.balance.snapshot import CircuitState
from muxtunnel.forward import forward, guarded
from muxtunnel.group_status import GroupRow, MemberRow
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.server import _visitors
from muxtunnel.server._balanced import BalancedStream
from muxtunnel.server._host import Host
from muxtunnel.server._registry import GroupService, MemberHandle
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.status import ServiceRow
from muxtunnel.transport import TcpListener, abort, peer_address, setup_done

__all__ = ["group_service_row", "rows", "serve_tcp", "serve_visitor", "serve_visitor_from"]


async def serve_tcp(host: Host, group: GroupService, sock: TcpListener) -> None:
    """Serve a TCP group's public socket until its listener scope is cancelled, then let the
    visitors already in finish (idle ones are still cut), as `_visitors.serve_tcp` does."""
    async with anyio.create_task_group() as visitors:
        sweeper = anyio.CancelScope()

        async def sweep() -> None:
            with sweeper:
                await _visitors.close_idle_visitors(host, group.name)

        visitors.start_soon(sweep)
        with group.listener_scope:
            async with sock:

                async def on_visitor(visitor: anyio.abc.SocketStream) -> None:
                    await guarded(serve_visitor(host, group, visitor), visitor, group=group.name)

                await sock.serve(on_visitor, task_group=visitors, setting_up=_visitors.SETTING_UP)
        await group.in_flight.drained()
        sweeper.cancel()


async def serve_visitor(host: Host, group: GroupService, visitor: anyio.abc.SocketStream) -> None:
    """One TCP visitor of a group: limits, admission, a member, and its bytes both ways."""
    address = peer_address(visitor)
    if address is None:  # reset before we got to it
        await abort(visitor)
        return
    await serve_visitor_from(host, group, visitor, address)


async def serve_visitor_from(
    host: Host, group: GroupService, visitor: anyio.abc.ByteStream, address: tuple[str, int]
) -> None:
    """`serve_visitor` for a visitor from `address`: its own socket, or a stream another node
    of a cluster handed over."""
    config, name = host.config, group.name
    source = address_key(address[0])
    limiter = host.limiter_of(name)
    reason = None
    if group.in_flight.count >= limiter.connections_allowed(config.max_visitors_per_service):
        reason = "visitors_per_service"
    elif group.sources[source] >= config.max_visitors_per_source:
        reason = "visitors_per_source"
    if reason is not None:
        host.refusals.refuse(reason, _visitors.REFUSED[reason], service=name, source=source)
        await abort(visitor)
        return
    admission = _visitors.admit(host, name, source)
    if isinstance(admission, Refusal):  # counted and logged by the rate limiter
        await abort(visitor)
        return
    hashed = group.group.settings.policy.kind is PolicyKind.HASH_SOURCE

    def preamble(member: MemberHandle) -> bytes:
        version = member.service.proxy_protocol
        return _visitors.proxy_header(version, address, visitor) if version else b""

    def retried() -> None:
        group.retries_total += 1

    stream = BalancedStream(
        group.group, address, source if hashed else None, preamble=preamble,
        on_retry=retried, refusals=host.refusals,
    )  # fmt: skip
    group.sources[source] += 1
    try:
        started = await stream.start()
        setup_done()
        if not started:
            group.visitor_failed("no member available")
            await abort(visitor)
            return
        with group.in_flight.track():
            await forward(
                visitor, stream, visitor_side=True, service=name,
                peer=format_host_port(*address), traffic=host.traffic_of(name),
                limiter=limiter, group=name,
            )  # fmt: skip
        if stream.failed:
            group.visitor_failed("every dial it was given failed")
    finally:
        group.sources[source] -= 1
        if not group.sources[source]:
            del group.sources[source]
        if admission is not None:
            admission.release()


def rows(groups: dict[str, GroupService], public_host: str, now: float) -> list[GroupRow]:
    """Every group as a status row, by name."""
    result = []
    for name, group in sorted(groups.items()):
        snapshot = group.group.snapshot(now)
        members = []
        for member, seen in zip(group.group.members, snapshot.members, strict=True):
            handle = member.handle
            circuit = seen.circuit
            members.append(
                MemberRow(
                    id=seen.member_id, service=handle.service.name,
                    session=handle.service.session_id, weight=seen.weight,
                    healthy=seen.healthy, available=seen.available,
                    open_connections=seen.open_visitors, visitors_total=seen.picked_total,
                    dial_failures=seen.dial_failures_total, circuit=circuit.state.value,
                    circuit_remaining_s=circuit.remaining_s
                    if circuit.state is CircuitState.OPEN else None,
                    circuit_opened_total=circuit.opened_total, health_detail=handle.detail,
                )
            )  # fmt: skip
        public = group.urls[0] if group.urls else format_host_port(public_host, group.port)
        result.append(
            GroupRow(
                name=name, type=group.type, public=public, policy=snapshot.policy,
                members=tuple(members), picked_total=snapshot.picked_total,
                retries_total=group.retries_total, failed_total=group.failed_total,
            )
        )  # fmt: skip
    return result


def group_service_row(
    group: GroupService,
    public_host: str,
    traffic: ServiceTraffic | None,
    limiter: ServiceLimiter | None,
) -> ServiceRow:
    """A group as a row of the services table (its name's traffic and limits)."""
    udp = group.type == "udp"
    public = group.urls[0] if group.urls else format_host_port(public_host, group.port)
    return ServiceRow(
        name=group.name,
        type=group.type,
        public=public,
        open_connections=0 if udp else group.in_flight.count,
        connections_total=group.udp.flows_opened if udp else group.in_flight.total,
        bytes_in=group.udp.bytes_in if udp else (traffic.bytes_in if traffic else 0),
        bytes_out=group.udp.bytes_out if udp else (traffic.bytes_out if traffic else 0),
        udp_dropped=group.udp.dropped() if udp else None,
        limits=limiter.describe() if limiter is not None else {},
        urls=group.urls,
        members=len(group.group),
    )
