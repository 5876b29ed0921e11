"""What a visitor's request asks for, read off its h11 event; the proxy's own refusals."""

from __future__ import annotations

from urllib.parse import urlsplit

import h11

__all__ = ["CLOSING_STATUSES", "Refusal", "cycle_done", "head_bytes", "host_and_path"]

#: Statuses after which we close even a connection that could carry another request: the
#: request broke the protocol (or took too long), so whatever follows it cannot be trusted.
CLOSING_STATUSES = frozenset({400, 408, 431, 501})


class Refusal(Exception):
    """A request the proxy answers itself with `status` (and counts under `reason`)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def head_bytes(request: h11.Request) -> int:
    """The size of a request head as sent (within a few bytes of line endings)."""
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def cycle_done(conn: h11.Connection) -> bool:
    """Both sides finished this request/response and kept the connection alive."""
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def host_and_path(request: h11.Request) -> tuple[bytes, str, bytes]:
    """(Host as the visitor sent it, the path to route by, the target to send upstream)."""
    hosts = [value for name, value in request.headers if name == b"host"]
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
