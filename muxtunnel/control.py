"""The control protocol spoken on a session's first stream, and the header of each visitor stream.

Wire format: each message is a msgpack map preceded by its length as a 2-byte big-endian
integer. The map's `kind` key names the message; the other keys are the dataclass fields below
(bytes as msgpack bin, text as msgpack str). Keys a receiver does not know are ignored, so a
later version may add optional fields; anything missing or of the wrong type is an error.

Exchange (client C, server S):
    C -> S  Hello(version, client_nonce, client_name[, resume])
    S -> C  Challenge(version, server_nonce[, features, resume_id])  or Error(version_mismatch)
    C -> S  Register(service, type, remote_port, tag[, compression, compression_level,
                     proxy_protocol, the web options of an http/https service,
                     compression_fallback, the group fields of a load-balancing group's
                     member, private and visitor_keys; instance, for any service, to a
                     server whose Challenge listed FEATURE_INSTANCE])
    S -> C  Registered(..., tag[, compression, urls, compression_level, member, private])
                                                          or Error
                                    (tags: auth.client_tag / auth.server_tag, see auth.py)
    C -> S  Unregister(service)                           any time later
    C -> S  MemberUpdate(service, healthy, weight, detail)  any time later, to a server whose
                                    Challenge listed FEATURE_GROUPS
    C -> S  VisitorKeys(service, visitor_keys)            a private service's keys changed
    S -> C  Registered(...)                               or Error
Each visitor stream the server opens starts with one VisitorHeader, framed the same way; with
`compressed: false` (only to a client that registered with `compression_fallback`) the stream
travels uncompressed although its service agreed compression. With `confirm` (a group member's
streams) the client's first byte back is `DIAL_CONFIRMED`, sent once its local dial succeeded
and before any visitor byte goes to the service (a failed dial resets the stream instead):
until then the server may replay the visitor's first bytes to another member.

`resume` asks for a resumable session, and a `resume_id` in the Challenge grants it: from the
first successful registration on, the session may go on over a new carrier (`muxtunnel.resume`).
Hello and Challenge live in `muxtunnel.hello`; the private services' messages in `visitmsg`.

A private service (`Register.private`) has no public port: its visitor keys come sealed in the
registration (`muxtunnel.visitauth`), and `muxtunnel visit` (V) reaches it:
    V -> S  Hello, then Visit(service, type, tag[, compression, compression_level])
    S -> V  Visited(service, type, tag, online[, compression, compression_level])  or Error
    S -> V  Presence(service, online)                     when its provider comes or goes
    S -> V  Error(access_revoked, service)                its visitor token was revoked
The visitor then opens a stream per connection (or UDP flow), starting with a VisitorHeader
(its own address); the server opens one on the provider's session for it and splices the two.

Peer bytes enter only through `receive_message` / `read_visitor_header`; whatever they hold,
those raise `ControlError` (carrying the error code to answer with) or let `anyio.EndOfStream`
through, nothing else. A message longer than `MAX_MESSAGE_BYTES` is refused from its length
prefix, before any of its body is read (`framing`). Deadlines are the caller's: wrap calls in
`anyio.fail_after`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from anyio.abc import ByteReceiveStream, ByteSendStream

from muxtunnel import fields
from muxtunnel.auth import TAG_BYTES
from muxtunnel.framing import MAX_MESSAGE_BYTES, ControlError, frame, receive_frame, unpack_map
from muxtunnel.framing import Wire as _Wire
from muxtunnel.hello import RESUME_ID_BYTES, Challenge, Hello
from muxtunnel.log import safe_text
from muxtunnel.model import MAX_WEIGHT, ServiceSpec, ServiceType
from muxtunnel.visitmsg import ACCESS_REVOKED, PRIVATE_TYPES, Presence, Visit, Visited, VisitorKeys

__all__ = [
    "ACCESS_REVOKED", "AUTH_FAILED", "BAD_REQUEST", "DIAL_CONFIRMED", "DOMAIN_NOT_ALLOWED",
    "DOMAIN_TAKEN", "FEATURE_GROUPS", "FEATURE_INSTANCE", "INTERNAL_ERROR", "LIMIT_REACHED",
    "MAX_MESSAGE_BYTES",
    "PORT_IN_USE", "PORT_NOT_ALLOWED", "PRIVATE_TYPES", "PROTOCOL_VERSION", "RATE_LIMITED",
    "REGISTRY_UNAVAILABLE", "RESUME_ID_BYTES", "SERVICE_CLOSED", "SERVICE_TAKEN", "UNSUPPORTED",
    "VERSION_MISMATCH",
    "Challenge", "ControlError", "Error", "Hello", "MemberUpdate", "Message", "Presence",
    "Register", "Registered", "Unregister", "Visit", "Visited", "VisitorHeader", "VisitorKeys",
    "decode_message", "decode_visitor_header", "encode_message", "encode_visitor_header",
    "read_visitor_header", "receive_message", "send_message",
]  # fmt: skip

PROTOCOL_VERSION = 1
_MAX_ERROR_MESSAGE_CHARS = 1024
#: An error message's UTF-8 bytes: with the rest of its message, well within MAX_MESSAGE_BYTES.
_MAX_ERROR_MESSAGE_BYTES = 3072

# Error codes (Error.code). A peer may send codes we do not know; treat them as a refusal.
AUTH_FAILED = "auth_failed"
PORT_NOT_ALLOWED = "port_not_allowed"
PORT_IN_USE = "port_in_use"
SERVICE_TAKEN = "service_taken"
BAD_REQUEST = "bad_request"
VERSION_MISMATCH = "version_mismatch"
RATE_LIMITED = "rate_limited"
INTERNAL_ERROR = "internal_error"
#: Server -> client, unasked: a live service was closed (e.g. the server's config changed).
SERVICE_CLOSED = "service_closed"
#: A web service's name (or one of its domains and locations) is served by another client.
DOMAIN_TAKEN = "domain_taken"
#: A custom domain the server's policy does not let this service claim.
DOMAIN_NOT_ALLOWED = "domain_not_allowed"
#: The server does not serve this kind of service (http/https without web ports).
UNSUPPORTED = "unsupported"
#: A config limit (services per session, per address); a cluster's registry down (retry later).
LIMIT_REACHED, REGISTRY_UNAVAILABLE = "limit_reached", "registry_unavailable"

#: `Challenge.features`: the server takes load-balancing groups (Register's group fields,
#: MemberUpdate, VisitorHeader.confirm).
FEATURE_GROUPS = "groups"
#: `Challenge.features`: any registration may carry the client's `instance` (not only a group
#: member's): a cluster's nodes know one client's sessions at several of them by it.
FEATURE_INSTANCE = "instance"
#: A group member's first byte on a visitor stream: its local dial succeeded.
DIAL_CONFIRMED = b"\x00"


@dataclass(frozen=True, slots=True)
class Register(_Wire):
    """Client -> server: expose `service`; `tag` proves the client holds the service's token.

    The web options (subdomain ... response_timeout_s) are checked here for shape only; the
    server checks what they mean (names, locations, headers) when it builds the routes.
    """

    WIRE_KIND: ClassVar[str] = "register"
    EXTENSIONS: ClassVar[tuple[str, ...]] = (
        "compression", "compression_level", "proxy_protocol", "subdomain", "custom_domains",
        "locations", "host_rewrite", "set_headers", "remove_headers", "basic_auth",
        "response_timeout_s", "compression_fallback", "group", "group_key", "group_proof",
        "weight", "healthy", "instance", "private", "visitor_keys",
    )  # fmt: skip
    service: str
    type: ServiceType
    #: Public port wanted; 0 lets the server pick one from its allowed ports.
    remote_port: int
    tag: bytes
    #: Optional (later versions): compression asked for ("zstd"), and the level to use.
    compression: str | None = None
    compression_level: int = 0
    #: "v1" / "v2": a PROXY protocol header first on every visitor stream.
    proxy_protocol: str | None = None
    #: http/https: `model.HttpOptions`, field by field (basic_auth as (user, password)).
    subdomain: str | None = None
    custom_domains: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    host_rewrite: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    basic_auth: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    response_timeout_s: float | None = None
    #: The client takes a visitor stream uncompressed when its header says so (the server
    #: falls back to that when a session's compression budget is spent).
    compression_fallback: bool = False
    #: A member of the group `group` (the tag covers it): its group token's public key and
    #: proof, weight, health now, process id (`fields.check_group_options`).
    group: str | None = None
    group_key: bytes = b""
    group_proof: bytes = dataclasses.field(default=b"", repr=False)
    weight: int = 1
    healthy: bool = True
    instance: bytes = b""
    #: No public port: only visitors holding one of the sealed `visitor_keys` reach it.
    private: bool = False
    visitor_keys: bytes = b""

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_type(self.type)
        fields.check_int("remote_port", self.remote_port, 0, 65535)
        fields.check_bytes("tag", self.tag, TAG_BYTES)
        fields.check_compression(self.compression)
        fields.check_int("compression_level", self.compression_level, 0, 22)
        fields.check_bool("compression_fallback", self.compression_fallback)
        fields.check_bool("private", self.private)
        fields.check_sealed_keys(self.visitor_keys)
        if self.private and (self.type not in PRIVATE_TYPES or self.group is not None):
            raise ValueError("only tcp and udp services that are no group member can be private")
        fields.check_web_options(self)
        fields.check_group_options(self)

    @classmethod
    def of(
        cls, spec: ServiceSpec, tag: bytes, remote_port: int, *, keys: bytes = b"", **group: Any
    ) -> Register:
        """The registration of `spec`, asking for `remote_port` (`keys`: a private service's
        sealed visitor keys); a group member's `group_key`, `group_proof`, `healthy` and
        `instance` come as keywords."""
        level = spec.compression_level if spec.compression else 0
        web, fallback = spec.http, bool(spec.compression)
        if spec.group is not None:
            group.update(group=spec.group.name, weight=spec.group.weight)
        if web is None:
            return cls(spec.name, spec.type, 0 if spec.private else remote_port, tag,
                       spec.compression, level, spec.proxy_protocol,
                       compression_fallback=fallback, private=spec.private, visitor_keys=keys,
                       **group)  # fmt: skip
        auth = web.basic_auth
        return cls(
            spec.name, spec.type, 0, tag, spec.compression, level, spec.proxy_protocol,
            compression_fallback=fallback,
            subdomain=web.subdomain, custom_domains=web.custom_domains, locations=web.locations,
            host_rewrite=web.host_rewrite, set_headers=web.set_headers,
            remove_headers=web.remove_headers,
            basic_auth=(auth.user, auth.password.value) if auth is not None else None,
            response_timeout_s=web.response_timeout_s, **group,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Registered(_Wire):
    """Server -> client: the service is live at `public_host:public_port`; `tag` is the
    server's proof that it holds the same token."""

    WIRE_KIND: ClassVar[str] = "registered"
    EXTENSIONS: ClassVar[tuple[str, ...]] = (
        "compression", "urls", "compression_level", "member", "private",
    )  # fmt: skip
    service: str
    type: ServiceType
    public_host: str
    public_port: int
    tag: bytes
    #: Optional (later versions): the compression both sides use on visitor streams, if any.
    compression: str | None = None
    #: http/https: where visitors reach the service (`http://app.example.com`), first the main.
    urls: tuple[str, ...] = ()
    #: The zstd level both sides use (0: the client's own, as before this field).
    compression_level: int = 0
    #: A group's member: its id in the group (status rows and logs of the server show it).
    member: str | None = None
    #: The service is private: no public port (`public_port` 0). A client that asked for a
    #: private service refuses an answer without it (a server too old to know what it means).
    private: bool = False

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_type(self.type)
        fields.check_text("public_host", self.public_host, fields.MAX_TEXT_CHARS)
        fields.check_bool("private", self.private)
        fields.check_int("public_port", self.public_port, 0 if self.private else 1, 65535)
        fields.check_bytes("tag", self.tag, TAG_BYTES)
        fields.check_compression(self.compression)
        object.__setattr__(self, "urls", fields.texts("urls", self.urls))
        fields.check_int("compression_level", self.compression_level, 0, 22)
        fields.optional_text("member", self.member)


@dataclass(frozen=True, slots=True)
class Unregister(_Wire):
    """Client -> server: stop exposing `service` (its visitors are closed)."""

    WIRE_KIND: ClassVar[str] = "unregister"
    service: str

    def __post_init__(self) -> None:
        fields.check_service(self.service)


@dataclass(frozen=True, slots=True)
class Error(_Wire):
    """Either side: a request failed. `service` names the registration it concerns, if any.

    For a failed authentication the server says `auth_failed` and nothing more, whether the
    service is unknown or the token is wrong. `message` is made safe at construction, never
    refused (a refusal may quote a long port list): escaped and shortened (`safe_text`).
    """

    WIRE_KIND: ClassVar[str] = "error"
    code: str
    message: str
    service: str | None = None

    def __post_init__(self) -> None:
        fields.check_text("code", self.code, 64)
        if type(self.message) is not str:
            raise ValueError("message must be a string")
        safe = safe_text(self.message, _MAX_ERROR_MESSAGE_CHARS, _MAX_ERROR_MESSAGE_BYTES)
        object.__setattr__(self, "message", safe)
        if self.service is not None:
            fields.check_service(self.service)


@dataclass(frozen=True, slots=True)
class VisitorHeader(_Wire):
    """Server -> client, first bytes of every visitor stream: which service, and who is calling."""

    WIRE_KIND: ClassVar[str] = "visitor"
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("compressed", "confirm", "handed_on")
    service: str
    type: ServiceType
    peer_host: str
    peer_port: int
    #: False: this stream travels uncompressed although its service agreed compression.
    compressed: bool = True
    #: A group member's stream: send `DIAL_CONFIRMED` before the service's bytes.
    confirm: bool = False
    #: Between cluster nodes: a web request a node already handed on once (its group had no
    #: usable member there), never handed on again.
    handed_on: bool = False

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_type(self.type)
        fields.check_text("peer_host", self.peer_host, fields.MAX_TEXT_CHARS)
        fields.check_int("peer_port", self.peer_port, 0, 65535)
        fields.check_bool("compressed", self.compressed)
        fields.check_bool("confirm", self.confirm)
        fields.check_bool("handed_on", self.handed_on)


@dataclass(frozen=True, slots=True)
class MemberUpdate(_Wire):
    """Client -> server: a group member's target turned healthy or unhealthy, or its weight
    changed (a reload); sent only to a server that listed FEATURE_GROUPS."""

    WIRE_KIND: ClassVar[str] = "member_update"
    service: str
    healthy: bool
    weight: int
    #: What the deciding health check saw ("connected", "HTTP 503", ...).
    detail: str = ""

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_bool("healthy", self.healthy)
        fields.check_int("weight", self.weight, 0, MAX_WEIGHT)
        fields.check_text("detail", self.detail, fields.MAX_TEXT_CHARS, empty_ok=True)


Message: TypeAlias = (
    Hello | Challenge | Register | Registered | Unregister | Error | MemberUpdate | Visit
    | Visited | Presence | VisitorKeys
)  # fmt: skip
_KINDS: tuple[type[Message], ...] = (
    Hello, Challenge, Register, Registered, Unregister, Error, MemberUpdate, Visit, Visited,
    Presence, VisitorKeys,
)  # fmt: skip
_MESSAGE_KINDS: dict[str, type[Message]] = {cls.WIRE_KIND: cls for cls in _KINDS}


# --- messages on the wire (`framing`) ---


def encode_message(message: Message) -> bytes:
    """Length prefix plus msgpack body. `ValueError` if it would exceed the size limit."""
    return frame(message.to_wire())


def decode_message(body: bytes) -> Message:
    """Decode one message body (without its length prefix)."""
    data = unpack_map(body)
    cls = _MESSAGE_KINDS.get(data["kind"])
    if cls is None:
        raise ControlError(f"unknown message kind {data['kind'][:64]!r}")
    return cls.from_wire(data)


async def send_message(stream: ByteSendStream, message: Message) -> None:
    """Write one framed message."""
    await stream.send(encode_message(message))


async def receive_message(stream: ByteReceiveStream) -> Message:
    """Read one framed message. `ControlError` on garbage; `anyio.EndOfStream` on EOF."""
    return decode_message(await receive_frame(stream))


def encode_visitor_header(header: VisitorHeader) -> bytes:
    """The framed header, to write as the first bytes of a visitor stream."""
    return frame(header.to_wire())


def decode_visitor_header(body: bytes) -> VisitorHeader:
    """Decode a visitor header body (without its length prefix)."""
    return decode_visitor_header_map(unpack_map(body))


def decode_visitor_header_map(data: dict[str, Any]) -> VisitorHeader:
    """A visitor header from its unpacked map."""
    if data["kind"] != VisitorHeader.WIRE_KIND:
        raise ControlError(f"expected a visitor header, got {data['kind'][:64]!r}")
    return VisitorHeader.from_wire(data)


async def read_visitor_header(stream: ByteReceiveStream) -> VisitorHeader:
    """Read the header at the start of a visitor stream; the stream then carries raw bytes."""
    return decode_visitor_header(await receive_frame(stream))
