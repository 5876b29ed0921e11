"""The client's side of resumption: attach a new carrier to the session, switch onto it, and
keep a resumable session going when its carrier breaks (the handshake is `muxtunnel.resume`'s).

`attach` opens the handshake on a fresh carrier and checks the server's proof before giving
its own: the result is an `Attached` carrier, which can measure round trips (`probe`, a
standby path's score) and take the session over (`switch`). `keep_resuming` is the loop a
resumable session runs beside it: each time the session suspends it connects again at once,
then with the client's usual backoff, until the session is back or `resume_timeout_s` ended it;
a server that no longer knows the session (it restarted), or whose address refuses connections
(its process is gone, and the session with it), ends it at once, so that the client registers
afresh.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import anyio
import anyio.abc
import structlog

from mux import Session, SessionClosed
from muxtunnel import control, resume
from muxtunnel.auth import new_nonce
from muxtunnel.client._carrier import Carrier, open_carrier
from muxtunnel.client._state import (
    CONTROL_TIMEOUT_S,
    FatalError,
    RetryableError,
    ServerGone,
    backoff_s,
)
from muxtunnel.control import Error
from muxtunnel.framing import ControlError
from muxtunnel.model import ClientConfig
from muxtunnel.status import ResumeRow, ServerRow
from muxtunnel.transport import abort

__all__ = [
    "Attached",
    "ProbeTimeout",
    "ResumeRefused",
    "ResumeStats",
    "Resuming",
    "attach",
    "keep_resuming",
    "start_resuming",
]

log = structlog.get_logger("muxtunnel.client")
M = TypeVar("M", resume.ResumeChallenge, resume.Attached)

_FAILURES = (
    TimeoutError,
    ControlError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class ResumeRefused(Exception):
    """The server will not resume this session (`reason`: why); only a fresh one will do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProbeTimeout(RetryableError):
    """A probe got no answer in time (the carrier may still work: its answer may come late)."""


class ResumeStats:
    """What resuming did for one server: resumes, and failures by reason."""

    def __init__(self) -> None:
        self.resumes = 0
        self.failures: Counter[str] = Counter()

    def rows(
        self, server: str, online: bool, reconnects: int, session: Session | None
    ) -> tuple[ServerRow, ResumeRow]:
        """The status rows of `server` and of resuming, `session` its latest session if any."""
        live = session is not None and not session.closed
        suspended = session is not None and live and session.suspended
        replay = session.replay_bytes if session is not None and live else 0
        rtt_s = session.rtt_s if session is not None and live else None
        row = ServerRow(server, online, suspended, reconnects, self.resumes, rtt_s, replay)
        peak = session.replay_peak_bytes if session is not None else 0
        return row, ResumeRow(self.resumes, dict(self.failures), int(suspended), replay, peak)


class Attached:
    """A carrier the server accepted for the session: it probes, and it can take over."""

    def __init__(self, carrier: Carrier, switch_sent: bool = False) -> None:
        self.carrier = carrier
        #: `attach` sent our Switch already, right after the Attach (one round trip less).
        self._switch_sent = switch_sent
        self._seq = 0
        self._lock = anyio.Lock()  # one exchange at a time: a probe or the switch
        #: The session runs on this carrier now: no more probes on it.
        self.taken = False

    async def probe(self, timeout_s: float) -> float:
        """One round trip on this carrier, in seconds; `RetryableError` if it failed."""
        async with self._lock:
            if self.taken:
                raise RetryableError("the session runs on this carrier now")
            self._seq = (self._seq + 1) % 2**32
            started = anyio.current_time()
            try:
                with anyio.fail_after(timeout_s):
                    await resume.send(self.carrier.stream, resume.Probe(self._seq))
                    while True:  # an answer to an earlier probe that timed out may come first
                        answer = await resume.receive(self.carrier.stream)
                        if not isinstance(answer, resume.Probe):
                            raise ControlError(f"unexpected {type(answer).__name__}")
                        if answer.seq == self._seq:
                            return anyio.current_time() - started
            except TimeoutError:
                raise ProbeTimeout(f"no answer within {timeout_s:g} s") from None
            except _FAILURES as exc:
                raise RetryableError(f"probe failed: {exc or type(exc).__name__}") from None

    async def switch(self, session: Session, reason: str) -> None:
        """Move `session` onto this carrier: detach it from its own (if it still has one), tell
        the server how far we received, resume from how far it did.

        `RetryableError` if the carrier failed first (the session is then left suspended, for
        another carrier to take over); `SessionClosed` if the session cannot resume.
        """
        stream = self.carrier.stream
        async with self._lock:
            # The old carrier stays open until the server has moved the session too: its end
            # read first would end the session there.
            moved = anyio.Event()
            if not session.suspended:
                session.detach(reason, close_after=moved)
            try:
                with anyio.fail_after(CONTROL_TIMEOUT_S):
                    if not self._switch_sent:
                        await resume.send(stream, resume.Switch(session.bytes_received))
                    self._switch_sent = False
                    answer = await resume.receive(stream)
                    while isinstance(answer, resume.Probe):  # late, for a probe that timed out
                        answer = await resume.receive(stream)
                if not isinstance(answer, resume.Switch):
                    raise ControlError(f"expected a switch, got {type(answer).__name__}")
            except _FAILURES as exc:
                await abort(stream)
                raise RetryableError(f"switch failed: {exc or type(exc).__name__}") from None
            finally:
                moved.set()
            self.taken = True
            await session.resume(stream, answer.received)

    async def aclose(self) -> None:
        await abort(self.carrier.stream)


async def attach(
    carrier: Carrier, ticket: resume.Ticket, suspended: Session | None = None
) -> Attached:
    """Attach `carrier` to the session `ticket` names; closes it on failure. With the
    `suspended` session (its counts final), the Switch goes right after the Attach.

    `ResumeRefused` if the server does not know the session (or will not take our proof, or
    cannot prove its own); `RetryableError` if the carrier failed.
    """
    stream, sid = carrier.stream, ticket.session_id
    client_nonce = new_nonce()
    try:
        with anyio.fail_after(CONTROL_TIMEOUT_S):
            await resume.send(stream, resume.ResumeHello(sid, client_nonce), magic=True)
            challenge = await _expect(stream, resume.ResumeChallenge)
            nonces = (client_nonce, challenge.server_nonce)
            if not resume.verify_proof(
                challenge.proof, ticket.key, "server", sid, *nonces, carrier.binding
            ):
                raise ResumeRefused("server_proof", "the server could not prove the session's key")
            mine = resume.proof(ticket.key, "client", sid, *nonces, carrier.binding)
            switch = suspended is not None and suspended.suspended
            messages: list[resume.HandshakeMessage] = [resume.Attach(mine)]
            if switch and suspended is not None:
                messages.append(resume.Switch(suspended.bytes_received))
            await resume.send(stream, *messages)
            await _expect(stream, resume.Attached)
    except ResumeRefused:
        await abort(stream)
        raise
    except _FAILURES as exc:
        await abort(stream)
        raise RetryableError(f"resume failed: {exc or type(exc).__name__}") from None
    return Attached(carrier, switch_sent=switch)


async def _expect(stream: anyio.abc.ByteStream, kind: type[M]) -> M:
    message = await resume.receive(stream)
    if isinstance(message, Error):
        if message.code in (resume.UNKNOWN_SESSION, control.AUTH_FAILED):
            raise ResumeRefused(message.code, message.message)
        raise RetryableError(f"the server refused the resume: {message.message}")
    if not isinstance(message, kind):
        raise ControlError(f"expected {kind.__name__}, got {type(message).__name__}")
    return message


class Resuming(Protocol):
    """What resuming a session needs of its client (`Client`)."""

    config: ClientConfig
    tls_context: ssl.SSLContext | None
    resume_stats: ResumeStats

    @property
    def server(self) -> str: ...


def start_resuming(
    tg: anyio.abc.TaskGroup, session: Session, ticket: resume.Ticket, client: Resuming
) -> None:
    """Both sides agreed: from now on `session` suspends when its carrier is lost, and a task
    of `tg` resumes it over a new one (`keep_resuming`) with `client`'s settings."""
    session.enable_resume()

    async def connect() -> Carrier:  # the server's name resolved anew
        return await open_carrier(client.config, client.tls_context)

    def delay_s(attempt: int) -> float:
        return backoff_s(attempt, client.config.reconnect_min_s, client.config.reconnect_max_s)

    tg.start_soon(
        keep_resuming, session, ticket, connect, delay_s, client.resume_stats, client.server
    )


async def keep_resuming(
    session: Session,
    ticket: resume.Ticket,
    connect: Callable[[], Awaitable[Carrier]],
    delay_s: Callable[[int], float],
    stats: ResumeStats,
    server: str,
) -> None:
    """Each time `session` loses its carrier, resume it over a new one from `connect`: at
    once, then after `delay_s(attempt)`; until the session ends. A refusal ends the session."""
    while True:
        try:
            reason = await session.wait_carrier_lost()
        except SessionClosed:
            return
        log.warning("carrier lost; resuming", server=server, reason=reason)
        attempt = 0
        while session.suspended:
            try:
                attached = await attach(await connect(), ticket, session)
                await attached.switch(session, reason)
            except (ResumeRefused, FatalError, ServerGone) as exc:
                why = exc.reason if isinstance(exc, ResumeRefused) else "fatal"
                why = "server_gone" if isinstance(exc, ServerGone) else why
                stats.failures[why] += 1
                log.warning("resume refused; registering afresh", server=server, error=str(exc))
                await session.aclose()  # its visitors fail now: they could never resume
                return
            except RetryableError as exc:
                stats.failures["unreachable"] += 1
                log.info("resume failed; retrying", server=server, error=str(exc))
                await anyio.sleep(delay_s(attempt))
                attempt += 1
                continue
            except SessionClosed:
                return
            stats.resumes += 1
            log.info("session resumed", server=server, resumes=session.resumes)
