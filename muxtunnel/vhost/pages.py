"""The responses the proxy writes itself: small HTML pages, never cached, closing when asked."""

from __future__ import annotations

import html

import h11

__all__ = ["error_response"]

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{status} {reason}</title></head>
<body><h1>{status} {reason}</h1><p>{detail}</p><hr><p>muxtunnel</p></body></html>
"""


def error_response(
    status: int,
    detail: str,
    *,
    close: bool,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[h11.Response, bytes]:
    """A complete response with an HTML body; `detail` is escaped here, callers pass text."""
    reason = _REASONS.get(status, "Error")
    body = _PAGE.format(status=status, reason=reason, detail=html.escape(detail)).encode()
    headers = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
        *(extra_headers or []),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return h11.Response(status_code=status, headers=headers, reason=reason.encode()), body
