"""What a visitor's request asks for, read off its h11 event; the proxy's own refusals."""

from __future__ import annotations

from urllib.parse import urlsplit

import h11

from muxtunnel.vhost._exchange import ExchangeFailure, UpstreamBusy, UpstreamSlow, VisitorBroke

__all__ = [
    "CLOSING_STATUSES",
    "Refusal",
    "RequestHead",
    "cycle_done",
    "host_and_path",
    "refusal_for",
]

#: Statuses after which we close even a connection that could carry another request: the
#: request broke the protocol (or took too long), so whatever follows it cannot be trusted.
CLOSING_STATUSES = frozenset({400, 408, 431, 501})


class Refusal(Exception):
    """A request the proxy answers itself with `status` (and counts under `reason`)."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        #: Headers the answer carries besides the usual ones (`Retry-After` of a 429).
        self.headers = headers or []


class RequestHead:
    """What routing and forwarding need of a request, read in one pass over its headers.

    (h11's `Headers` iterate slowly, one `__getitem__` per pair; `raw_items()` is one list.)
    """

    __slots__ = (
        "authorization",
        "chunked",
        "connection_tokens",
        "count",
        "expect",
        "has_body",
        "hosts",
        "raw",
        "size",
        "upgrade",
    )

    def __init__(self, request: h11.Request) -> None:
        self.raw = raw = request.headers.raw_items()
        self.count = len(raw)
        size = len(request.method) + len(request.target) + 12  # request line, within a few bytes
        hosts: list[bytes] = []
        expect: list[bytes] = []
        tokens: set[bytes] = set()
        authorization = upgrade = None
        chunked = has_body = False
        for name, value in raw:
            size += len(name) + len(value) + 4
            lower = name.lower()
            if lower == b"host":
                hosts.append(value)
            elif lower == b"content-length":
                has_body = has_body or value.strip() != b"0"
            elif lower == b"transfer-encoding":
                chunked = has_body = True
            elif lower == b"connection":
                tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
            elif lower == b"expect":
                expect.append(value.strip().lower())
            elif lower == b"authorization":
                authorization = authorization or value
            elif lower == b"upgrade":
                upgrade = upgrade or value
        self.size = size
        self.hosts = hosts
        self.expect = expect
        self.connection_tokens = tokens
        self.authorization: bytes | None = authorization
        #: The Upgrade value, when the request asks to switch (`Connection: upgrade` too).
        self.upgrade: bytes | None = upgrade if b"upgrade" in tokens else None
        self.chunked = chunked
        self.has_body = has_body


def cycle_done(conn: h11.Connection) -> bool:
    """Both sides finished this request/response and kept the connection alive."""
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def host_and_path(request: h11.Request, hosts: list[bytes]) -> tuple[bytes, str, bytes]:
    """(Host as the visitor sent it, the path to route by, the target to send upstream)."""
    if len(hosts) > 1:
        raise Refusal(400, "bad_request", "More than one Host header.")
    target = request.target
    if target.startswith(b"/"):
        if not hosts:
            raise Refusal(400, "bad_request", "The request has no Host header.")
        path = target.partition(b"?")[0].partition(b"#")[0]
        return hosts[0], path.decode("latin-1"), target
    if target == b"*" and request.method == b"OPTIONS":
        if not hosts:
            raise Refusal(400, "bad_request", "The request has no Host header.")
        return hosts[0], "/", target
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
        parts = urlsplit(target.decode("latin-1"))
        if not parts.netloc or "@" in parts.netloc:
            raise Refusal(400, "bad_request", "Invalid absolute request target.")
        route_path = parts.path or "/"
        origin = route_path + (f"?{parts.query}" if parts.query else "")
        return parts.netloc.encode("latin-1"), route_path, origin.encode("latin-1")
    raise Refusal(400, "bad_request", "The request target must be a path.")


def refusal_for(failure: ExchangeFailure) -> Refusal:
    """The answer to a request whose exchange failed before any response byte went out."""
    if isinstance(failure, VisitorBroke):
        return Refusal(400, "bad_request", f"Malformed request body: {failure}")
    if isinstance(failure, UpstreamSlow):
        return Refusal(504, "upstream_timeout", "The service did not answer in time.")
    if isinstance(failure, UpstreamBusy):
        return Refusal(
            429, "rate_limited", "Too many requests: try again later.",
            [(b"Retry-After", failure.retry_after.encode())],
        )  # fmt: skip
    return Refusal(502, "upstream_unavailable", "The service is not reachable right now.")
