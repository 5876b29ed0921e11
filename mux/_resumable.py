"""What a resumable `Session` does more: hold on while its carrier is lost, go on over another.

`Resumable` is a base class of `Session` (`aio.py`): the session's public API for resumption and
the state behind it, kept apart from the plain session's tasks. While resumption is on (both
sides agreed and the application said so, `enable_resume`), a carrier that fails or stalls does
not end the session: it suspends. Its reader, writer and keepalive stop, the carrier is swapped
for `DetachedCarrier` (which takes no frames, so nothing more is counted as sent or received),
streams keep their buffers and windows and their users simply wait, and whoever waits in
`wait_carrier_lost` is told. The application connects again, agrees with the peer on how far
each side received (`bytes_received` both ways), and calls `resume` with the new carrier; or
`resume_timeout_s` passes and the session ends as an unresumable one does (streams reset).

What must stay true:

1. Suspended, no byte moves: `DetachedCarrier` hands no frames to anything and reads nothing,
   so the core's counts (`bytes_received`, the replay log) are final the moment `detach` (or the
   carrier's loss) has suspended the session; that is what the resume handshake exchanges.
2. One suspension at a time, counted once: a second loss while suspended changes nothing.
3. A resume that cannot be (the session ended, or the peer's count is outside what we can
   replay) closes the new carrier and leaves the session ended, never half resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel

from mux._carrier import CARRIER_ERRORS, Carrier, StreamCarrier, TransportCarrier
from mux._config import MuxConfig
from mux._connection import Buffer, Connection
from mux._errors import LocalProtocolError
from mux._replay import ResumeError
from mux._stream import SessionClosed

__all__ = ["DetachedCarrier", "Resumable", "Suspension"]

#: How long closing a lost carrier may take (in the background: nobody waits for it).
_CLOSE_OLD_CARRIER_S = 1.0
#: How long a detached carrier is held open at most, waiting for `detach`'s `close_after`
#: (the peer's answer to a move takes a round trip; a stalled peer gets no more).
_DETACH_HOLD_S = 10.0


class DetachedCarrier:
    """The carrier of a suspended session: every use fails as a lost connection would."""

    async def receive(self) -> Buffer:
        raise anyio.BrokenResourceError("the session is suspended: no carrier")

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        raise anyio.BrokenResourceError("the session is suspended: no carrier")

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        return False

    async def flush(self) -> None:
        """Nothing was written."""

    async def aclose(self) -> None:
        """Nothing to close."""


class Suspension:
    """Whether a session resumes when its carrier is lost, and whether it is waiting to."""

    def __init__(self) -> None:
        #: Both sides agreed: a lost carrier suspends the session instead of ending it.
        self.enabled = False
        #: Why the carrier was lost, while the session waits for another (None: attached).
        self.reason: str | None = None
        #: Set while suspended (and once the session ended); a fresh one after each resume.
        self.lost = anyio.Event()
        #: Set by a resume; a fresh one at each suspension.
        self.back = anyio.Event()
        #: Carriers lost while resumable, and sessions resumed on a new one.
        self.losses = 0
        self.resumes = 0
        #: When the current suspension began (`anyio.current_time()`).
        self.since: float | None = None
        #: The session ended because no new carrier came within `resume_timeout_s`.
        self.expired = False

    @property
    def suspended(self) -> bool:
        return self.reason is not None

    def suspend(self, reason: str) -> bool:
        """Enter the suspended state; False if already in it (rule 2)."""
        if self.reason is not None:
            return False
        self.reason = reason
        self.losses += 1
        self.since = anyio.current_time()
        self.back = anyio.Event()
        self.lost.set()
        return True

    def resumed(self) -> None:
        """A new carrier is in: wake whoever waits for it."""
        self.reason = None
        self.since = None
        self.resumes += 1
        self.lost = anyio.Event()
        self.back.set()


class Resumable:
    """The resumption half of `Session`: see the module's doc."""

    if TYPE_CHECKING:  # what `Session` provides
        conn: Connection
        config: MuxConfig
        _carrier: Carrier
        _carrier_scope: anyio.CancelScope | None
        _tasks: anyio.abc.TaskGroup | None
        _error: SessionClosed | None
        _suspension: Suspension

        async def _fail(self, reason: str) -> None: ...

        def _wake_writer(self, now: bool = False) -> None: ...

        def _install(self, transport: anyio.abc.ByteStream, prefix: bytes) -> None: ...

        def _raise_if_closed(self) -> None: ...

    # ------------------------------------------------------------------ the application's side

    def enable_resume(self) -> None:
        """Both sides agreed to resume this session: send receipts, and from now on suspend
        when the carrier is lost instead of ending (`LocalProtocolError` unless `resumable`)."""
        self.conn.resume_agreed()
        self._suspension.enabled = True
        self._wake_writer()

    def disable_resume(self) -> None:
        """The peer does not resume sessions: keep nothing for it; a lost carrier ends it."""
        self.conn.stop_retaining()
        self._suspension.enabled = False

    @property
    def resume_enabled(self) -> bool:
        """A lost carrier suspends the session (instead of ending it)."""
        return self._suspension.enabled

    @property
    def suspended(self) -> bool:
        """True while the carrier is lost and the session waits for another."""
        return self._suspension.suspended and self._error is None

    @property
    def suspended_for_s(self) -> float | None:
        """How long the current suspension has lasted (None: not suspended)."""
        since = self._suspension.since
        if since is None or self._error is not None:
            return None
        return anyio.current_time() - since

    @property
    def resume_expired(self) -> bool:
        """The session ended because no new carrier came within `resume_timeout_s`."""
        return self._suspension.expired

    @property
    def carrier_losses(self) -> int:
        """Carriers lost while resumption was on."""
        return self._suspension.losses

    @property
    def resumes(self) -> int:
        """Times the session went on over a new carrier."""
        return self._suspension.resumes

    @property
    def bytes_received(self) -> int:
        """Carrier bytes the core has taken in: where the peer replays from after a resume."""
        return self.conn.bytes_received

    @property
    def replay_bytes(self) -> int:
        """Bytes held now to write again on a new carrier."""
        return self.conn.replay_bytes

    @property
    def replay_peak_bytes(self) -> int:
        """Most bytes held at once to write again on a new carrier."""
        return self.conn.replay_peak_bytes

    async def wait_carrier_lost(self) -> str:
        """Wait until the session suspends; returns why. `SessionClosed` if it ends instead."""
        await self._suspension.lost.wait()
        self._raise_if_closed()
        return self._suspension.reason or "the carrier was lost"

    def detach(self, reason: str, close_after: anyio.Event | None = None) -> None:
        """Stop using the carrier now and suspend, as if it had been lost (to move the session
        to another carrier); the counts to exchange with the peer are final on return.

        The carrier is closed at once, or once `close_after` is set (at most `_DETACH_HOLD_S`
        later): a peer that reads the carrier's end before it hears of the move over another
        one would take that end for the session's (an EOF is a deliberate end, not a break)."""
        if not self._suspension.enabled:
            raise LocalProtocolError("resumption is not enabled on this session")
        self._raise_if_closed()
        self._suspend(reason, close_after)

    async def resume(
        self, transport: anyio.abc.ByteStream, peer_received: int, prefix: bytes = b""
    ) -> None:
        """Go on over `transport`; the peer has received `peer_received` of our bytes.

        The session must be suspended (its carrier lost, or `detach`). What the peer has not
        received leaves first. `SessionClosed` if the session ended meanwhile or cannot resume
        from that count (it ends then); `transport` is closed in either case (rule 3).
        `prefix`: bytes already read from `transport`, parsed first.
        """
        if self._error is None and not self._suspension.suspended:
            raise LocalProtocolError("the session is not suspended: detach it first")
        try:
            self._raise_if_closed()
            self.conn.resume(peer_received)
        except (SessionClosed, ResumeError) as exc:
            with anyio.CancelScope(shield=True):
                await transport.aclose()
            if self._error is None:
                await self._fail(f"cannot resume: {exc}")
            raise (self._error or SessionClosed(str(exc))) from exc
        self._carrier = StreamCarrier(transport, self.config.read_size_bytes, prefix)
        self._install(transport, prefix)  # the fast path, if `transport` allows it
        self._suspension.resumed()
        self._wake_writer()
        await anyio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ the session's side

    async def _lost(self, reason: str) -> None:
        """The carrier failed: suspend if resumption is on, else end the session. A peer that
        said GoAway is leaving: its carrier's end is the session's (it would never resume)."""
        if self._suspension.enabled and self.conn.remote_go_away is None:
            self._suspend(reason)
        else:
            await self._fail(reason)

    def _suspend(self, reason: str, close_after: anyio.Event | None = None) -> None:
        if self._error is not None or not self._suspension.suspend(reason):
            return
        old, self._carrier = self._carrier, DetachedCarrier()
        if isinstance(old, TransportCarrier):  # its reads and room feed the core no more
            old.inline = old.on_room = None
        if self._carrier_scope is not None:
            self._carrier_scope.cancel()
        if self._tasks is not None:
            self._tasks.start_soon(self._close_carrier, old, close_after, name="mux lost carrier")

    async def _wait_for_carrier(self) -> bool:
        """Suspended: wait for `resume`. False once `resume_timeout_s` ended the session."""
        suspension = self._suspension
        timeout_s = self.config.resume_timeout_s
        with anyio.move_on_after(timeout_s):
            await suspension.back.wait()
        if suspension.suspended:
            reason = suspension.reason
            suspension.expired = True
            await self._fail(f"{reason}; no new carrier within {timeout_s:g} s (resume_timeout_s)")
            return False
        return self._error is None

    @staticmethod
    async def _close_carrier(carrier: Carrier, after: anyio.Event | None = None) -> None:
        if after is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_DETACH_HOLD_S):
                await after.wait()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_OLD_CARRIER_S):
            try:
                await carrier.aclose()
            except CARRIER_ERRORS:
                pass
