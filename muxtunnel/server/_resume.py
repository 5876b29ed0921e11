"""The server's side of resumption: which sessions may go on over a new carrier, and the
carriers that come to take them over (the handshake is `muxtunnel.resume`'s).

A session becomes resumable once its client asked (`Hello.resume`), the server agreed
(`Challenge.resume_id`) and the first registration proved the client's token: from then on
`ClientSession` is in `ResumableSessions` under its id, and its mux session suspends instead of
ending when the carrier breaks. A carrier that starts with `resume.MAGIC` is served here:

- Until the client's proof holds, the carrier is a pre-auth connection like any other (its
  admission ticket bounds it) and gets `auth_timeout_s` for the handshake; a wrong proof
  counts against its source as a failed registration does.
- An unknown id, a wrong proof, a malformed or late handshake: refused (counted by reason,
  logged at doubling counts), the carrier closed, the session it named untouched.
- Proven, the carrier stays attached as a standby (answering probes) until the client
  switches the session onto it, the session ends, or it idles for `STANDBY_IDLE_S`; at most
  `MAX_ATTACHED_CARRIERS` per session.
- A switch detaches the session from its current carrier (if it has one), answers with the
  session's count of received bytes and resumes it on this carrier; one switch at a time.
- A service of a suspended session goes to a new registration that proves the same token
  (`take_over`): a client that crashed and restarts is not refused for `resume_timeout_s`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

import anyio
import anyio.abc
import structlog

from mux import Session, SessionClosed
from muxtunnel import control, resume
from muxtunnel.admission import AdmissionGate, Ticket
from muxtunnel.auth import new_nonce
from muxtunnel.control import RESUME_ID_BYTES, Error, Hello
from muxtunnel.framing import ControlError
from muxtunnel.log import Refusals
from muxtunnel.model import ServerConfig
from muxtunnel.resilience_status import ResumeRow
from muxtunnel.server._registry import Registry
from muxtunnel.sources import FailureLimiter, address_key
from muxtunnel.specs import format_host_port
from muxtunnel.transport import abort

__all__ = [
    "MAX_ATTACHED_CARRIERS",
    "PREAMBLE_WAIT_S",
    "STANDBY_IDLE_S",
    "Attachable",
    "ResumableSessions",
    "grant",
    "never",
    "read_preamble",
    "serve_resume",
    "session_ended",
    "start",
    "take_over",
]

log = structlog.get_logger("muxtunnel.server")

#: Carriers attached to one session at once, besides its own: a client's standby paths (it
#: keeps one per configured path; a handful is plenty).
MAX_ATTACHED_CARRIERS = 8
#: A standby carrier with no probe for this long is dropped (clients probe every second or so).
STANDBY_IDLE_S = 30.0
#: How long a service taken over from a suspended session may take to close its socket.
_TAKEOVER_WAIT_S = 2.0
#: How long a new carrier's first bytes are awaited before the server speaks first (a
#: resuming client sends `MAGIC` at once; a plain yamux peer may wait for our ping).
PREAMBLE_WAIT_S = 1.0
_HANDSHAKE_ERRORS = (
    TimeoutError,
    ControlError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class Attachable(Protocol):
    """A client session that may resume (`ClientSession`, once it is resumable)."""

    id: int
    #: Where its carrier comes from now.
    peer: str
    session: Session
    resume_id: bytes
    resume_key: bytes | None
    #: Carriers attached to it besides its own (standby paths), and one switch at a time.
    attached: int
    switching: anyio.Lock


class ResumeHost(Protocol):
    """What serving a resume needs of the server (`Server` is the one implementation)."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def failures(self) -> FailureLimiter: ...

    @property
    def preauth(self) -> AdmissionGate: ...

    @property
    def refusals(self) -> Refusals: ...

    @property
    def resumable(self) -> ResumableSessions: ...

    @property
    def registry(self) -> Registry: ...

    def auth_failed(self, source: str, now: float) -> None: ...


class ResumableSessions:
    """Sessions that may go on over a new carrier, by id; and how resuming them went."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, Attachable] = {}
        self.resumes = 0
        #: Failed resumes by reason (the refusals' reasons, without their "resume_" prefix).
        self.failures: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, target: Attachable) -> None:
        self._by_id[target.resume_id] = target

    def remove(self, target: Attachable) -> None:
        if self._by_id.get(target.resume_id) is target:
            del self._by_id[target.resume_id]

    def holder(self, session: int) -> Attachable | None:
        """The resumable session whose `id` is `session`, if any."""
        return next((each for each in self._by_id.values() if each.id == session), None)

    def get(self, session_id: bytes) -> Attachable | None:
        target = self._by_id.get(session_id)
        if target is None or target.resume_key is None or target.session.closed:
            return None
        return target

    def row(self, sessions: Iterable[Session]) -> ResumeRow:
        """Totals, and what the live `sessions` hold now."""
        live = list(sessions)
        return ResumeRow(
            resumes=self.resumes,
            failures=dict(self.failures),
            suspended=sum(1 for session in live if session.suspended),
            replay_bytes=sum(session.replay_bytes for session in live),
            replay_peak_bytes=max((session.replay_peak_bytes for session in live), default=0),
        )


def grant(hello: Hello, session: Session, config: ServerConfig) -> bytes:
    """The Challenge's resume id: a fresh one if the client asked and we resume sessions;
    b"" otherwise, and the session then keeps nothing for a resume."""
    if hello.resume and config.resume and session.conn.resumable:
        return secrets.token_bytes(RESUME_ID_BYTES)
    if session.conn.resumable:
        session.disable_resume()
    return b""


def start(
    host: ResumeHost,
    target: Attachable,
    service_key: bytes,
    service: str,
    nonces: tuple[bytes, bytes],
    binding: bytes,
) -> None:
    """The session's first registration succeeded: it may resume from now on."""
    if not target.resume_id or target.resume_key is not None:
        return
    server_nonce, client_nonce = nonces
    target.resume_key = resume.resume_key(
        service_key, service, server_nonce, client_nonce, binding, target.resume_id
    )
    host.resumable.add(target)
    target.session.enable_resume()


async def take_over(host: ResumeHost, taker: int, name: str, key: bytes) -> None:
    """Give service `name` to session `taker`, which just proved its token (`key`), if a
    suspended session holds it: that client may be gone for good (a crash, a power cut: no
    GoAway said so), and its restart must not be refused for `resume_timeout_s`. The service
    leaves the suspended session (its other services stay); its port stays reserved for `key`,
    which the new registration holds."""
    existing = host.registry.by_name.get(name)
    if existing is None or existing.session_id == taker or existing.key != key:
        return
    holder = host.resumable.holder(existing.session_id)
    if holder is None or not holder.session.suspended or existing.member is not None:
        return
    log.warning(
        "service taken over from a suspended session",
        service=name,
        session=existing.session_id,
        by_session=taker,
    )
    host.registry.remove(existing, host.config.port_reservation_s)
    with anyio.move_on_after(_TAKEOVER_WAIT_S):
        await existing.ended.wait()  # its port is free once its socket closed


def never(target: Attachable) -> None:
    """The session will never resume (a visitor's): keep nothing for it from now on."""
    if target.resume_key is None and target.session.conn.resumable:
        target.session.disable_resume()
        target.resume_id = b""


def session_ended(host: ResumeHost, target: Attachable) -> None:
    """The session is over: it can no longer be resumed (count it if it waited in vain)."""
    host.resumable.remove(target)
    if target.session.resume_expired:
        host.resumable.failures["expired"] += 1


async def read_preamble(carrier: anyio.abc.ByteStream, auth_timeout_s: float) -> bytes | None:
    """A new carrier's first bytes: `resume.MAGIC`, or the start of a fresh session's frames
    (the session parses them first); None if the peer closed first.

    A client that resumes says `MAGIC` at once; one that waits for us to speak first (a plain
    yamux peer may wait for our keepalive ping) gets a fresh session after `PREAMBLE_WAIT_S`,
    with whatever it sent meanwhile (b"": nothing), its `auth_timeout_s` counting from there.
    """
    got = bytearray()
    with anyio.move_on_after(min(PREAMBLE_WAIT_S, auth_timeout_s)):
        try:
            while len(got) < len(resume.MAGIC):
                got += await carrier.receive(len(resume.MAGIC) - len(got))
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return bytes(got)


def _refuse(host: ResumeHost, reason: str, message: str, **context: str | int) -> None:
    host.resumable.failures[reason] += 1
    host.refusals.refuse(f"resume_{reason}", message, n=1, **context)


async def serve_resume(
    host: ResumeHost,
    carrier: anyio.abc.ByteStream,
    binding: bytes,
    address: tuple[str, int],
    ticket: Ticket,
) -> None:
    """Serve a carrier that began with `resume.MAGIC` (already read); returns once it is the
    session's, or closed."""
    peer = format_host_port(*address)
    source = address_key(address[0])
    now = anyio.current_time()
    if not host.failures.allowed(source, now):
        _refuse(host, "rate_limited", "resume refused: too many failed attempts", peer=peer)
        await abort(carrier)
        return
    target: Attachable | None = None
    try:
        with anyio.fail_after(host.config.auth_timeout_s):
            hello = await resume.receive(carrier)
            if not isinstance(hello, resume.ResumeHello):
                raise ControlError(f"expected a resume hello, got {type(hello).__name__}")
            target = host.resumable.get(hello.session_id)
            if target is None or target.resume_key is None:
                _refuse(host, "unknown_session", "resume refused: no such session", peer=peer)
                text = "no such session (the server restarted, or the session ended)"
                await resume.send(carrier, Error(resume.UNKNOWN_SESSION, text))
                await abort(carrier)
                return
            key, sid = target.resume_key, hello.session_id
            server_nonce = new_nonce()
            nonces = (hello.client_nonce, server_nonce)
            mine = resume.proof(key, "server", sid, *nonces, binding)
            await resume.send(carrier, resume.ResumeChallenge(server_nonce, mine))
            attach = await resume.receive(carrier)
            if not isinstance(attach, resume.Attach) or not resume.verify_proof(
                attach.proof, key, "client", sid, *nonces, binding
            ):
                host.auth_failed(source, now)
                _refuse(host, "auth_failed", "resume refused: wrong proof", peer=peer,
                        session=target.id)  # fmt: skip
                await resume.send(carrier, Error(control.AUTH_FAILED, "resume refused"))
                await abort(carrier)
                return
    except _HANDSHAKE_ERRORS as exc:
        _refuse(host, "handshake_failed", "resume handshake failed", peer=peer,
                error=str(exc) or type(exc).__name__)  # fmt: skip
        await abort(carrier)
        return
    host.preauth.release(ticket)  # proven: no longer a pre-auth connection
    await _serve_attached(host, target, carrier, peer)


async def _serve_attached(
    host: ResumeHost, target: Attachable, carrier: anyio.abc.ByteStream, peer: str
) -> None:
    """An attached carrier: answer probes until the client switches the session onto it."""
    if target.attached >= MAX_ATTACHED_CARRIERS:
        _refuse(host, "limit", "resume refused: too many carriers attached", peer=peer,
                session=target.id, limit=MAX_ATTACHED_CARRIERS)  # fmt: skip
        text = f"this session has {MAX_ATTACHED_CARRIERS} carriers attached already"
        await resume.send(carrier, Error(control.LIMIT_REACHED, text))
        await abort(carrier)
        return
    target.attached += 1
    handed_over = False
    try:
        async with anyio.create_task_group() as tg:

            async def end_with_session() -> None:
                await target.session.wait_closed()
                tg.cancel_scope.cancel()

            tg.start_soon(end_with_session)
            await resume.send(carrier, resume.Attached())
            handed_over = await _until_switched(host, target, carrier, peer)
            tg.cancel_scope.cancel()
    except _HANDSHAKE_ERRORS:
        pass  # a standby that went away or idled: the session is not concerned
    finally:
        target.attached -= 1
        if not handed_over:
            await abort(carrier)


async def _until_switched(
    host: ResumeHost, target: Attachable, carrier: anyio.abc.ByteStream, peer: str
) -> bool:
    """Answer probes; on a switch resume the session here. True once the carrier is its."""
    while True:
        with anyio.fail_after(STANDBY_IDLE_S):
            message = await resume.receive(carrier)
        if isinstance(message, resume.Probe):
            await resume.send(carrier, message)
            continue
        if not isinstance(message, resume.Switch):
            raise ControlError(f"unexpected {type(message).__name__} on an attached carrier")
        session = target.session
        async with target.switching:
            if session.closed:
                return False
            if not session.suspended:
                session.detach(f"the client moved the session to {peer}")
            await resume.send(carrier, resume.Switch(session.bytes_received))
            try:
                await session.resume(carrier, message.received)
            except SessionClosed as exc:
                _refuse(host, "bad_count", "resume failed", peer=peer, session=target.id,
                        error=str(exc))  # fmt: skip
                return True  # closed by `resume`
        target.peer = peer
        host.resumable.resumes += 1
        log.info("session resumed", session=target.id, peer=peer, resumes=session.resumes)
        return True


class Drainable(Protocol):
    async def drained(self) -> None: ...


async def drain(sessions: Iterable[Session], visitors: Drainable, timeout_s: float) -> None:
    """Wait up to `timeout_s` for the visitors to finish (a server's graceful stop).

    Meanwhile a session whose carrier is lost (suspended, or lost during the drain) ends at
    once: the server takes no new carrier any more, so nothing can resume it, and its visitors
    could only wait out the drain.
    """
    async with anyio.create_task_group() as tg:
        for session in sessions:
            if session.resume_enabled:
                tg.start_soon(_end_once_suspended, session)
        with anyio.move_on_after(timeout_s):
            await visitors.drained()
        tg.cancel_scope.cancel()


async def _end_once_suspended(session: Session) -> None:
    try:
        await session.wait_carrier_lost()
    except SessionClosed:
        return
    await session.aclose()
