"""Header rewriting between visitor and service: hop-by-hop removal, forwarded headers, auth.

Pure functions over h11's `(name, value)` byte pairs; the proxy calls each once per message.

- Hop-by-hop (RFC 9110 §7.6.1): `Connection` and every header it names, `Keep-Alive`,
  `Proxy-Connection`, `TE`, `Transfer-Encoding` and `Upgrade` are dropped both ways. Framing is
  h11's business: a chunked request goes on as chunked, a response is re-framed by h11 for the
  visitor. `Upgrade` and `Connection: upgrade` pass only on an upgrade request and its 101.
- Forwarded (proxy -> service): `X-Forwarded-For` gets the visitor's address appended (earlier
  entries are the visitor's claims, kept for the service to judge), `X-Forwarded-Proto` and
  `X-Forwarded-Host` are set (we are the edge: a visitor's own values are dropped, so plain HTTP
  cannot pass for HTTPS), and `Forwarded` (RFC 7239) gets one element appended.
- Basic auth: the credentials are compared in constant time (`hmac.compare_digest`), and the
  `Authorization` header that carried them is not forwarded: the service has no use for the
  tunnel's password.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "ForwardedFor",
    "basic_auth_ok",
    "connection_tokens",
    "forwarded_element",
    "request_headers",
    "response_headers",
]

Header = tuple[bytes, bytes]

#: RFC 9110 §7.6.1 (Proxy-Connection: RFC 9112 §9.6, still sent by old clients).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"}
)
#: Headers the proxy writes itself on the way to the service.
_FORWARDED_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
#: What `request_headers` always drops, by `relayed`: hop-by-hop, Host (written first), Expect
#: (we answer 100-continue ourselves; other expectations never get here) and, unless another
#: node of ours set them, the forwarded headers we write.
_DROP = {
    False: HOP_BY_HOP | _FORWARDED_SET | {b"host", b"expect"},
    True: HOP_BY_HOP | {b"host", b"expect"},
}
_AUTHORIZATION = (b"authorization",)


class ForwardedFor:
    """The visitor's address, pre-formatted for `X-Forwarded-For` and `Forwarded` (once)."""

    __slots__ = ("_element", "forwarded_for", "xff")

    def __init__(self, host: str, port: int) -> None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, ipaddress.IPv6Address):
            self.xff = address.compressed.encode()
            node = f'"[{address.compressed}]:{port}"' if port else f'"[{address.compressed}]"'
        elif address is not None:
            self.xff = str(address).encode()
            node = f'"{address}:{port}"' if port else str(address)
        else:  # not an IP (a Unix socket, a test double): RFC 7239 §6.3 obfuscated identifier
            self.xff = b"unknown"
            node = "unknown"
        #: The `for=` parameter of a Forwarded element (RFC 7239 §6: quoted when it holds ':').
        self.forwarded_for = node.encode()
        #: The last element made, with its host and proto: a keep-alive visitor repeats them.
        self._element: tuple[bytes | None, bytes, bytes] = (None, b"", b"")

    def element(self, host: bytes | None, proto: bytes) -> bytes:
        """`forwarded_element(self, host, proto)`, made once per host and proto in a row."""
        last_host, last_proto, element = self._element
        if host != last_host or proto != last_proto or not element:
            element = forwarded_element(self, host, proto)
            self._element = (host, proto, element)
        return element


def forwarded_element(visitor: ForwardedFor, host: bytes | None, proto: bytes) -> bytes:
    """One RFC 7239 element: `for=...;host=...;proto=...`."""
    parts = [b"for=" + visitor.forwarded_for]
    if host:
        parts.append(b"host=" + _quote_if_needed(host))
    parts.append(b"proto=" + proto)
    return b";".join(parts)


def _quote_if_needed(value: bytes) -> bytes:
    # token chars (RFC 9110 §5.6.2); anything else (':' of a port, '[' of an IPv6) is quoted.
    if _TOKEN.fullmatch(value):  # one C pass: a generator over the bytes cost ~1 us a request
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


def connection_tokens(headers: Iterable[Header]) -> set[bytes]:
    """Lowercased tokens of every `Connection` header (the extra hop-by-hop names)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def request_headers(
    raw: Sequence[Header],
    *,
    visitor: ForwardedFor,
    proto: bytes,
    host: bytes,
    host_rewrite: bytes | None = None,
    remove: frozenset[bytes] = frozenset(),
    set_headers: Sequence[Header] = (),
    strip_authorization: bool = False,
    upgrade: bytes | None = None,
    chunked: bool = False,
    connection: set[bytes] | None = None,
    relayed: bool = False,
) -> list[Header]:
    """The headers the service receives for a visitor request with headers `raw`.

    `host`: the visitor's Host (as sent, or the authority of an absolute-form target); the
    service gets `host_rewrite` instead when given, first in the list. `upgrade`: the Upgrade
    value when the request asks to switch protocols (else None: Upgrade is dropped).
    `chunked`: the body is chunked. `connection`: the tokens of the Connection headers, when
    the caller has them already. `relayed`: another node of our cluster set the forwarded
    headers already (for this visitor): they are kept as they came, none is added.
    """
    drop = _DROP[relayed]  # one frozenset per request shape, no set built per request
    tokens = connection if connection is not None else connection_tokens(raw)
    if remove or strip_authorization or (tokens and not drop.issuperset(tokens)):
        drop = drop.union(tokens, remove, _AUTHORIZATION if strip_authorization else ())
    out: list[Header] = [(b"Host", host_rewrite or host)]
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    for name, value in raw:
        lower = name.lower()
        if lower in drop:
            continue
        if lower == b"x-forwarded-for" and not relayed:
            xff.append(value)
        elif lower == b"forwarded" and not relayed:
            forwarded.append(value)
        else:
            out.append((name, value))
    if not relayed:
        xff.append(visitor.xff)
        out.append((b"X-Forwarded-For", b", ".join(xff)))
        out.append((b"X-Forwarded-Proto", proto))
        out.append((b"X-Forwarded-Host", host))
        forwarded.append(visitor.element(host, proto))
        out.append((b"Forwarded", b", ".join(forwarded)))
    out.extend(set_headers)
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    return out


def response_headers(raw: Sequence[Header], *, upgrade: bool = False) -> list[Header]:
    """The headers the visitor receives for a service response (h11 re-frames the body)."""
    drop = connection_tokens(raw)
    drop.update(HOP_BY_HOP)
    out = [(name, value) for name, value in raw if name.lower() not in drop]
    if upgrade:
        out.extend((name, value) for name, value in raw if name.lower() == b"upgrade")
        out.append((b"Connection", b"upgrade"))
    return out


def basic_auth_ok(authorization: bytes | None, credentials: bytes) -> bool:
    """Does an `Authorization` value carry exactly `credentials` (`user:password`)?"""
    if authorization is None:
        return False
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, credentials)
