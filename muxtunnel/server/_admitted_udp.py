"""A UDP service's public socket with admission: each new flow is admitted by the service's rate
limits (`rate_limit`, `per_source`; a refused flow is never created), then opened on the member
its load-balancing group picks, within that member's share of its session's streams, or on the
one session of a service outside groups. Flows are not retried: a datagram has no dial to
confirm, and the flow ends with its member (its stream is reset when the member leaves).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.balance.group import Group
from muxtunnel.balance.member import Visit
from muxtunnel.balance.ratelimit import Admission, VisitorLimiter
from muxtunnel.control import VisitorHeader
from muxtunnel.log import Refusals
from muxtunnel.server._registry import MemberHandle
from muxtunnel.transport import Address
from muxtunnel.udp import OnEnd, UdpForwarder, frame

__all__ = ["AdmittedUdp"]


class AdmittedUdp(UdpForwarder):
    """A UDP service's socket: each new flow is admitted by the rate limits in force, then
    opened on the member its group picks (within that member's share of its session's streams),
    or on the one session of a service outside groups."""

    def __init__(
        self,
        service: str,
        *,
        idle_s: float,
        max_flows: int,
        limiter: Callable[[], VisitorLimiter | None],
        group: Group[MemberHandle] | None = None,
        session: Session | None = None,
        key_of: Callable[[str], str] = str,
        refusals: Refusals | None = None,
    ) -> None:
        super().__init__(session, service, idle_s=idle_s, max_flows=max_flows, refusals=refusals)
        self.group = group
        self._limiter = limiter
        self._key_of = key_of

    def _open_flow(
        self, address: Address, datagram: bytes
    ) -> tuple[MuxStream, OnEnd | None] | None:
        now = anyio.current_time()
        source = self._key_of(address[0])
        admission: Admission | None = None
        limiter = self._limiter()
        if limiter is not None:
            answer = limiter.admit(source, now)
            if not isinstance(answer, Admission):
                return None  # counted and logged by the limiter
            admission = answer
        release = admission.release if admission is not None else _nothing
        if self.group is None:
            opened = super()._open_flow(address, datagram)
            if opened is None:
                release()
                return None
            return opened[0], release
        on_member = self._open_on_member(address, datagram, source, now)
        if on_member is None:
            release()
            return None
        stream, visit = on_member
        handle = visit.handle
        handle.streams.add(stream)  # reset when the member leaves

        def on_end() -> None:
            handle.streams.discard(stream)
            handle.service.streams.give_back()
            visit.close()
            release()

        return stream, on_end

    def _open_on_member(
        self, address: Address, datagram: bytes, source: str, now: float
    ) -> tuple[MuxStream, Visit[MemberHandle]] | None:
        assert self.group is not None
        visit = self.group.pick(now, key=source)
        if visit is None:
            return None  # counted and logged by the group
        handle = visit.handle
        if not handle.service.streams.take():
            visit.close()  # its session's streams are taken: not the member's fault
            if self.refusals is not None:
                self.refusals.refuse(
                    "stream_quota",
                    "udp flow refused: its member has its share of the session's streams",
                    service=self.service,
                )
            return None
        header = VisitorHeader(handle.service.name, "udp", *address)
        try:
            stream = handle.session.open_stream_nowait(
                control.encode_visitor_header(header) + frame(datagram)
            )
        except (anyio.WouldBlock, anyio.BrokenResourceError) as exc:
            handle.service.streams.give_back()
            if isinstance(exc, anyio.WouldBlock):
                self.backlog_full()
                visit.close()
            else:
                visit.failed(now)
            return None
        visit.succeeded(now)
        return stream, visit


def _nothing() -> None:
    pass
