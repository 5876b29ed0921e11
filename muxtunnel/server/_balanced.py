"""A visitor's way to a load-balancing group's member, retried once on another member when the
first one's local dial fails before any of the visitor's bytes reached its service.

The signal (`control.DIAL_CONFIRMED`): a member's client, asked by `VisitorHeader.confirm`,
sends one byte back once its local dial succeeded and only then writes the visitor's bytes to
the service; a failed dial resets the stream instead. So until that byte has come, nothing the
visitor sent can have reached a service, and `BalancedStream` keeps it (at most
`REPLAY_LIMIT_BYTES`; past that the visitor waits for the confirmation) to replay on the next
member, with the visitor's EOF if it already came. The visitor's bytes go out at once, as they
would on a plain stream (no extra round trip); what a retry costs is only the failed attempt.

Invariants:
- the replay buffer holds exactly the bytes sent on the current attempt's stream since it
  opened, in order: a send appends and hands the bytes to the stream in one step (no await in
  between), and a retry takes its copy and sends it on the new stream in one step, so a byte
  is on at most one live attempt and every byte is on the last one;
- one task at a time settles an attempt (reads its confirmation, retries): `_lock`;
- every picked member gets one outcome (`Visit.succeeded` or `failed`) and one `close`.

`AdmittedUdp` is a UDP service's socket: each new flow is admitted by the service's rate limits
and goes to the member its group picks (or to the session of a service outside groups); flows
are not retried (a datagram has no dial to confirm).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.balance.group import Group
from muxtunnel.balance.member import Visit
from muxtunnel.balance.ratelimit import Admission, VisitorLimiter
from muxtunnel.compress import CompressedStream
from muxtunnel.control import VisitorHeader
from muxtunnel.server._registry import MemberHandle
from muxtunnel.transport import Address
from muxtunnel.udp import OnEnd, UdpForwarder, frame

__all__ = [
    "ATTEMPTS",
    "CONFIRM_TIMEOUT_S",
    "REPLAY_LIMIT_BYTES",
    "AdmittedUdp",
    "BalancedStream",
    "DialFailed",
]

#: A visitor tries at most this many members: the first pick and one retry (the issue's "once";
#: nginx's `proxy_next_upstream_tries` and HAProxy's `retries` are small numbers for the same
#: reason: a broken service should cost a visitor one round trip, not all the members').
ATTEMPTS = 2
#: Visitor bytes kept for a replay while the dial is unconfirmed. A request head and a small
#: body fit (h11's and nginx's header limits are 16 KiB and 8 KiB); HAProxy likewise retries
#: only requests that fit its 16 KiB buffer. A visitor that sends more waits for the dial.
REPLAY_LIMIT_BYTES = 64 * 1024
#: How long a member's client may take to confirm its dial: its own connect timeout
#: (`client._state.CONTROL_TIMEOUT_S`, 10 s) and room for the tunnel's round trip.
CONFIRM_TIMEOUT_S = 15.0
_FAILURES = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class DialFailed(anyio.BrokenResourceError):
    """No member the visitor was given reached its service: the visitor sees a reset."""


class BalancedStream(anyio.abc.ByteStream):
    """The visitor's stream to the member its group picked; see the module docstring.

    `start()` picks the first member and opens its stream; then it is a `ByteStream` like a
    visitor's `MuxStream`, compressed or not as the member agreed, with `reset()`.
    """

    def __init__(
        self,
        group: Group[MemberHandle],
        peer: Address,
        key: str | bytes | None,
        *,
        preamble: Callable[[MemberHandle], bytes] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._group = group
        self._peer = peer
        self._key = key
        self._preamble = preamble
        self._on_retry = on_retry
        self._tried: set[str] = set()
        self._attempt = 0
        self._visit: Visit[MemberHandle] | None = None
        self._raw: MuxStream | None = None
        self._tunnel: anyio.abc.ByteStream | None = None
        #: Bytes sent on this attempt while unconfirmed; None once the dial is confirmed.
        self._replay: bytearray | None = bytearray()
        self._eof = False
        self._error: anyio.BrokenResourceError | None = None
        self._lock = anyio.Lock()

    @property
    def failed(self) -> bool:
        """Did every member tried fail to reach its service (`DialFailed`)?"""
        return self._error is not None

    @property
    def member(self) -> MemberHandle | None:
        """The member of the current attempt."""
        return self._visit.handle if self._visit is not None else None

    async def start(self) -> bool:
        """Open the first attempt; False when no member may take the visitor."""
        return await self._next_attempt()

    # --- attempts ---

    async def _next_attempt(self) -> bool:
        """Pick a member not tried yet and open its stream, replaying what was sent."""
        while self._attempt < ATTEMPTS:
            now = anyio.current_time()
            visit = self._group.pick(now, key=self._key, exclude=self._tried)
            if visit is None:
                return False
            self._attempt += 1
            self._tried.add(visit.member.member_id)
            handle = visit.handle
            header = VisitorHeader(handle.service.name, handle.service.type, *self._peer, True)
            try:
                raw = await handle.session.open_stream(control.encode_visitor_header(header))
            except anyio.BrokenResourceError:  # its session just ended
                visit.failed(anyio.current_time())
                continue
            self._visit, self._raw = visit, raw
            handle.streams.add(raw)
            service = handle.service
            tunnel: anyio.abc.ByteStream = raw
            if service.compression:
                tunnel = CompressedStream(raw, service.compression_level)
            self._tunnel = tunnel
            # The member's PROXY protocol header, then what the visitor sent so far: taken and
            # handed to the stream in one step, so that a concurrent `send` comes after it.
            first = self._preamble(handle) if self._preamble is not None else b""
            first += self._replay or b""
            try:
                if first:
                    await tunnel.send(first)
                if self._eof:
                    await tunnel.send_eof()
            except _FAILURES:
                pass  # the stream failed at once: its confirmation will not come either
            return True
        return False

    def _drop_attempt(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.reset()
            if self._visit is not None:
                self._visit.handle.streams.discard(raw)

    async def _settle(self) -> None:
        """Wait for the current attempt's confirmation; retry once on a failed dial."""
        async with self._lock:
            while self._replay is not None:
                if self._error is not None:
                    raise self._error
                raw, visit = self._raw, self._visit
                if raw is None or visit is None:
                    raise anyio.ClosedResourceError
                timed_out = False
                first = b""
                try:
                    with anyio.fail_after(CONFIRM_TIMEOUT_S):
                        first = await raw.receive(1)
                except TimeoutError:
                    timed_out = True
                except _FAILURES:
                    pass
                now = anyio.current_time()
                if first == control.DIAL_CONFIRMED:
                    visit.succeeded(now)
                    self._replay = None
                    return
                visit.failed(now)
                self._drop_attempt()
                if timed_out or first:  # its bytes may have reached the service: no retry
                    self._fail(
                        "the member did not confirm its dial"
                        if timed_out
                        else "the member broke the dial confirmation"
                    )
                elif await self._next_attempt():
                    if self._on_retry is not None:
                        self._on_retry()
                else:
                    self._fail("no group member could reach its service")

    def _fail(self, reason: str) -> None:
        self._error = DialFailed(reason)
        raise self._error

    # --- ByteStream ---

    async def send(self, item: bytes) -> None:
        replay = self._replay
        if replay is None:
            assert self._tunnel is not None
            await self._tunnel.send(item)
            return
        while self._replay is not None and len(self._replay) >= REPLAY_LIMIT_BYTES:
            await self._settle()
        if self._replay is None:
            await self.send(item)
            return
        if self._error is not None:
            raise self._error
        assert self._tunnel is not None
        attempt = self._attempt
        self._replay += item
        try:
            await self._tunnel.send(item)
        except _FAILURES:
            if self._attempt == attempt:  # else a retry has replayed it already
                await self._settle()

    async def send_eof(self) -> None:
        if self._replay is None:
            assert self._tunnel is not None
            await self._tunnel.send_eof()
            return
        if self._error is not None:
            raise self._error
        assert self._tunnel is not None
        attempt = self._attempt
        self._eof = True
        try:
            await self._tunnel.send_eof()
        except _FAILURES:
            if self._attempt == attempt:
                await self._settle()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._replay is not None:
            await self._settle()
        assert self._tunnel is not None
        return await self._tunnel.receive(max_bytes)

    def reset(self) -> None:
        """Abort the visitor's stream (RST); its visit ends."""
        self._drop_attempt()
        self._close_visit()

    async def aclose(self) -> None:
        raw, tunnel = self._raw, self._tunnel
        self._raw = None
        try:
            if tunnel is not None and raw is not None:
                await tunnel.aclose()
        finally:
            if raw is not None and self._visit is not None:
                self._visit.handle.streams.discard(raw)
            self._close_visit()

    def _close_visit(self) -> None:
        if self._visit is not None:
            self._visit.close()


class AdmittedUdp(UdpForwarder):
    """A UDP service's socket: each new flow is admitted by the rate limits in force, then
    opened on the member its group picks (or on the one session of a service outside groups)."""

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
    ) -> None:
        super().__init__(session, service, idle_s=idle_s, max_flows=max_flows)
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
        if self.group is None:
            opened = super()._open_flow(address, datagram)
            if opened is None:
                if admission is not None:
                    admission.release()
                return None
            return opened[0], admission.release if admission is not None else None
        visit = self.group.pick(now, key=source)
        stream = None
        if visit is not None:
            handle = visit.handle
            header = VisitorHeader(handle.service.name, "udp", *address)
            try:
                stream = handle.session.open_stream_nowait(
                    control.encode_visitor_header(header) + frame(datagram)
                )
            except anyio.WouldBlock:
                self.counters.dropped_backpressure += 1
            except anyio.BrokenResourceError:
                pass
        if visit is None or stream is None:
            if visit is not None:
                visit.failed(now)
            if admission is not None:
                admission.release()
            return None
        visit.succeeded(now)
        handle.streams.add(stream)  # reset when the member leaves

        def on_end() -> None:
            handle.streams.discard(stream)
            visit.close()
            if admission is not None:
                admission.release()

        return stream, on_end
