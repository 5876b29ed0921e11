"""A load-balancing group's TCP visitors, and its status rows.

A visitor is admitted (the service's connection cap, then its rate limits: a refused one gets a
reset) and handed to `BalancedStream`, which gives it to the member the group picks and
replays it once on another member if that one's dial fails; `forward` then meters, throttles
and pipes it as any TCP visitor.
"""

from __future__ import annotations

import anyio
import anyio.abc

from muxtunnel.auth import address_key
from muxtunnel.balance.ratelimit import Refusal
from muxtunnel.balance.settings import PolicyKind
from muxtunnel.balance.snapshot import CircuitState
from muxtunnel.forward import forward
from muxtunnel.group_status import GroupRow, MemberRow
from muxtunnel.server import _services
from muxtunnel.server._balanced import BalancedStream
from muxtunnel.server._host import Host
from muxtunnel.server._registry import GroupService, MemberHandle
from muxtunnel.specs import format_host_port
from muxtunnel.transport import abort, peer_address

__all__ = ["rows", "serve_visitor"]


async def serve_visitor(host: Host, group: GroupService, visitor: anyio.abc.SocketStream) -> None:
    """One TCP visitor of a group: limits, admission, a member, and its bytes both ways."""
    address = peer_address(visitor)
    if address is None:  # reset before we got to it
        await abort(visitor)
        return
    limiter = host.limiter_of(group.name)
    if group.in_flight.count >= limiter.connections_allowed(host.config.max_visitors_per_service):
        await abort(visitor)
        return
    admission = _services.admit(host, group.name, address[0])
    if isinstance(admission, Refusal):
        await abort(visitor)
        return
    hashed = group.group.settings.policy.kind is PolicyKind.HASH_SOURCE

    def preamble(member: MemberHandle) -> bytes:
        version = member.service.proxy_protocol
        return _services.proxy_header(version, address, visitor) if version else b""

    def retried() -> None:
        group.retries_total += 1

    stream = BalancedStream(
        group.group, address, address_key(address[0]) if hashed else None,
        preamble=preamble, on_retry=retried,
    )  # fmt: skip
    try:
        if not await stream.start():
            group.visitor_failed("no member available")
            await abort(visitor)
            return
        with group.in_flight.track():
            await forward(
                visitor, stream, visitor_side=True, service=group.name,
                peer=format_host_port(*address), traffic=host.traffic_of(group.name),
                limiter=limiter, group=group.name,
            )  # fmt: skip
        if stream.failed:
            group.visitor_failed("every dial it was given failed")
    finally:
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
