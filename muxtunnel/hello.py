"""The opening exchange of a session's control channel: Hello and Challenge (see
`muxtunnel.control` for the whole exchange; `control` decodes them with the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from muxtunnel import fields
from muxtunnel.auth import NONCE_BYTES
from muxtunnel.framing import Wire as _Wire

__all__ = ["RESUME_ID_BYTES", "Challenge", "Hello"]

#: `Challenge.resume_id`: a resumable session's random id.
RESUME_ID_BYTES = 16


@dataclass(frozen=True, slots=True)
class Hello(_Wire):
    """Client -> server, first: the protocol version it speaks and its half of the nonces."""

    WIRE_KIND: ClassVar[str] = "hello"
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("resume",)
    version: int
    client_nonce: bytes
    #: Free text for the server's logs (e.g. the client host name); not authenticated.
    client_name: str
    #: Optional (later versions): the client would resume this session over a new carrier.
    resume: bool = False

    def __post_init__(self) -> None:
        fields.check_int("version", self.version, 0, 0xFFFF)
        fields.check_bytes("client_nonce", self.client_nonce, NONCE_BYTES)
        fields.check_text("client_name", self.client_name, fields.MAX_TEXT_CHARS, empty_ok=True)
        fields.check_bool("resume", self.resume)


@dataclass(frozen=True, slots=True)
class Challenge(_Wire):
    """Server -> client, answering Hello: the server's version and nonce for this session."""

    WIRE_KIND: ClassVar[str] = "challenge"
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("features", "resume_id")
    version: int
    server_nonce: bytes
    #: Optional (later versions): what the server supports beyond version 1 (FEATURE_GROUPS).
    features: tuple[str, ...] = ()
    #: Optional: the session's id, if it may resume (asked for, and the server resumes).
    resume_id: bytes = b""

    def __post_init__(self) -> None:
        fields.check_int("version", self.version, 0, 0xFFFF)
        fields.check_bytes("server_nonce", self.server_nonce, NONCE_BYTES)
        object.__setattr__(self, "features", fields.texts("features", self.features))
        if self.resume_id != b"":
            fields.check_bytes("resume_id", self.resume_id, RESUME_ID_BYTES)
