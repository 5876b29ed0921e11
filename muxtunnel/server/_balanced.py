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

"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from mux import MuxStream
from muxtunnel import control
from muxtunnel.balance.group import Group
from muxtunnel.balance.member import Visit
from muxtunnel.compress import CompressedStream, stream_memory_bytes
from muxtunnel.control import VisitorHeader
from muxtunnel.log import Refusals
from muxtunnel.server._registry import MemberHandle
from muxtunnel.transport import Address

__all__ = [
    "ATTEMPTS",
    "CONFIRM_TIMEOUT_S",
    "REPLAY_LIMIT_BYTES",
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
        refusals: Refusals | None = None,
    ) -> None:
        self._group = group
        self._refusals = refusals
        #: What the current attempt holds of its member's session: one stream, and the
        #: compression memory of a compressed stream (bytes).
        self._holds: tuple[MemberHandle, int] | None = None
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
            self._tried.add(visit.member.member_id)
            handle = visit.handle
            memory = self._hold(handle)
            if memory is None:  # its session's streams or memory are taken: not its fault
                visit.close()
                continue
            self._attempt += 1
            service = handle.service
            header = VisitorHeader(
                service.name, service.type, *self._peer, compressed=memory > 0 or not
                service.compression, confirm=True,
            )  # fmt: skip
            try:
                raw = await handle.session.open_stream(control.encode_visitor_header(header))
            except anyio.BrokenResourceError:  # its session just ended
                visit.failed(anyio.current_time())
                self._release()
                continue
            self._visit, self._raw = visit, raw
            handle.streams.add(raw)
            tunnel: anyio.abc.ByteStream = raw
            if memory:
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

    def _hold(self, handle: MemberHandle) -> int | None:
        """Take one of the member's session's streams, and compression memory if its streams
        are compressed: the bytes of memory taken (0: uncompressed), or None if refused."""
        service = handle.service
        if not service.streams.take():
            self._refuse("stream_quota", "its member has its share of the session's streams")
            return None
        memory = stream_memory_bytes(service.compression_level) if service.compression else 0
        if memory and not service.compression_memory.take(memory):
            memory = 0
            if not service.compression_fallback:
                service.streams.give_back()
                self._refuse("compression_budget", "the member's compression budget is spent")
                return None
        self._holds = (handle, memory)
        return memory

    def _release(self) -> None:
        holds, self._holds = self._holds, None
        if holds is not None:
            handle, memory = holds
            handle.service.streams.give_back()
            if memory:
                handle.service.compression_memory.give_back(memory)

    def _refuse(self, reason: str, why: str) -> None:
        if self._refusals is not None:
            self._refusals.refuse(reason, f"group visitor not given to a member: {why}")

    def _drop_attempt(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.reset()
            if self._visit is not None:
                self._visit.handle.streams.discard(raw)
        self._release()

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
            self._release()
            self._close_visit()

    def _close_visit(self) -> None:
        if self._visit is not None:
            self._visit.close()
