"""Resuming a session over a new carrier: the handshake on that carrier, and its keys.

A resumable session (asked for in `Hello.resume`, granted with `Challenge.resume_id`) goes on
over a new carrier when its own breaks (`mux`'s `Session.resume`: every open stream continues
byte-exact). The new carrier starts with `MAGIC` instead of a yamux header (whose first byte,
the version, is 0), then messages framed as control messages are (`framing`):

    C -> S  MAGIC, ResumeHello(session_id, client_nonce)
    S -> C  ResumeChallenge(server_nonce, proof)      or Error(unknown_session): register afresh
    C -> S  Attach(proof)
    S -> C  Attached()                                or Error(auth_failed | limit_reached)
    ...     Probe(seq) either way, answered with the same seq (a standby path's round trips)
    C -> S  Switch(received)       the client's session is detached: its count is final
    S -> C  Switch(received)       the server's too; the session's frames follow at once

then both sides `resume` the session on this carrier, each replaying what the other has not
received. The client sends `Attach` and `Switch` back to back when it resumes at once; a
standby path (`client.paths`) attaches and probes first, and switches when it is chosen.

Keys: once the session's first registration succeeded, both sides derive
`K = HMAC(service key, transcript("muxtunnel v1 resume key", service, nonces, channel binding,
session id))` from what that registration proved; K never crosses the wire. Each proof is
`HMAC(K, transcript(label, session id, the new carrier's nonces and channel binding))` with a
label per side, so a proof is good for one carrier and one direction only: a captured
handshake cannot be replayed, and a relaying man in the middle (whose certificate changes the
channel binding, see `tls`) cannot produce one. Whoever knows only the session id learns
nothing and can do nothing with it; a wrong proof is refused and leaves the session untouched.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from anyio.abc import ByteReceiveStream, ByteSendStream

from muxtunnel import fields
from muxtunnel.auth import NONCE_BYTES, TAG_BYTES, transcript
from muxtunnel.control import RESUME_ID_BYTES, Error
from muxtunnel.framing import ControlError, Wire, frame, receive_frame, unpack_map

__all__ = [
    "MAGIC",
    "UNKNOWN_SESSION",
    "Attach",
    "Attached",
    "HandshakeMessage",
    "Probe",
    "ResumeChallenge",
    "ResumeHello",
    "Switch",
    "Ticket",
    "proof",
    "receive",
    "resume_key",
    "send",
    "verify_proof",
]

#: The first bytes of a carrier that resumes a session (a fresh one starts with a 0 byte).
MAGIC = b"MXRS"
#: Error code: no session by that id (the server restarted, or the session already ended).
UNKNOWN_SESSION = "unknown_session"

_KEY_LABEL = b"muxtunnel v1 resume key"
_PROOF_LABELS = {"client": b"muxtunnel v1 resume client", "server": b"muxtunnel v1 resume server"}
#: Largest `Switch.received`: a u64, as the carrier's byte count is.
_MAX_COUNT = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a client needs to resume its session: the id, and the key both sides derived."""

    session_id: bytes
    key: bytes = b""


def resume_key(
    service_key: bytes,
    service: str,
    server_nonce: bytes,
    client_nonce: bytes,
    binding: bytes,
    session_id: bytes,
) -> bytes:
    """The session's resume key, from the session's first successful registration."""
    parts = (service.encode("utf-8"), server_nonce, client_nonce, binding, session_id)
    return hmac.digest(service_key, transcript(_KEY_LABEL, parts), "sha256")


def proof(
    key: bytes,
    side: Literal["client", "server"],
    session_id: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
    binding: bytes,
) -> bytes:
    """`side`'s proof that it holds the session's key, for this carrier only."""
    parts = (session_id, client_nonce, server_nonce, binding)
    return hmac.digest(key, transcript(_PROOF_LABELS[side], parts), "sha256")


def verify_proof(
    received: bytes,
    key: bytes,
    side: Literal["client", "server"],
    session_id: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
    binding: bytes,
) -> bool:
    """Constant-time check of a proof `side` sent."""
    expected = proof(key, side, session_id, client_nonce, server_nonce, binding)
    return hmac.compare_digest(received, expected)


@dataclass(frozen=True, slots=True)
class ResumeHello(Wire):
    """Client -> server, after `MAGIC`: which session, and the client's nonce for this carrier."""

    WIRE_KIND: ClassVar[str] = "resume"
    session_id: bytes
    client_nonce: bytes

    def __post_init__(self) -> None:
        fields.check_bytes("session_id", self.session_id, RESUME_ID_BYTES)
        fields.check_bytes("client_nonce", self.client_nonce, NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class ResumeChallenge(Wire):
    """Server -> client: its nonce for this carrier and its proof over both."""

    WIRE_KIND: ClassVar[str] = "resume_challenge"
    server_nonce: bytes
    proof: bytes

    def __post_init__(self) -> None:
        fields.check_bytes("server_nonce", self.server_nonce, NONCE_BYTES)
        fields.check_bytes("proof", self.proof, TAG_BYTES)


@dataclass(frozen=True, slots=True)
class Attach(Wire):
    """Client -> server: its proof; the carrier then belongs to the session."""

    WIRE_KIND: ClassVar[str] = "attach"
    proof: bytes

    def __post_init__(self) -> None:
        fields.check_bytes("proof", self.proof, TAG_BYTES)


@dataclass(frozen=True, slots=True)
class Attached(Wire):
    """Server -> client: the proof holds; the carrier may probe and switch."""

    WIRE_KIND: ClassVar[str] = "attached"


@dataclass(frozen=True, slots=True)
class Probe(Wire):
    """Either way: a round trip on a standby carrier; the answer carries the same `seq`."""

    WIRE_KIND: ClassVar[str] = "probe"
    seq: int

    def __post_init__(self) -> None:
        fields.check_int("seq", self.seq, 0, 2**32 - 1)


@dataclass(frozen=True, slots=True)
class Switch(Wire):
    """Either way: the sender's session is detached and has received `received` carrier bytes
    of the other side's; the session's frames follow this message at once."""

    WIRE_KIND: ClassVar[str] = "switch"
    received: int

    def __post_init__(self) -> None:
        fields.check_int("received", self.received, 0, _MAX_COUNT)


HandshakeMessage: TypeAlias = (
    ResumeHello | ResumeChallenge | Attach | Attached | Probe | Switch | Error
)
_KINDS: dict[str, type[HandshakeMessage]] = {
    cls.WIRE_KIND: cls
    for cls in (ResumeHello, ResumeChallenge, Attach, Attached, Probe, Switch, Error)
}


async def send(stream: ByteSendStream, *messages: HandshakeMessage, magic: bool = False) -> None:
    """Write `messages` in one send (after `MAGIC` if asked)."""
    data = b"".join(frame(message.to_wire()) for message in messages)
    await stream.send(MAGIC + data if magic else data)


async def receive(stream: ByteReceiveStream) -> HandshakeMessage:
    """Read one message, and not one byte more (the session's frames may follow it).

    `ControlError` on garbage; `anyio.EndOfStream` at EOF. Deadlines are the caller's.
    """
    data = unpack_map(await receive_frame(stream))
    cls = _KINDS.get(data["kind"])
    if cls is None:
        raise ControlError(f"unexpected message {data['kind'][:64]!r} in a resume handshake")
    return cls.from_wire(data)
