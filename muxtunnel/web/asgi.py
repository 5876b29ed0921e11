"""Serve a web page's ASGI app (the dashboard, the inspector) with uvicorn on our event loop.

uvicorn runs inside the process's anyio task group, on the socket we bind (`transport`'s seam
maps a busy port to `TransportError`), and never touches signals: SIGINT and SIGTERM stay the
composition root's. What anyone can hold is bounded by uvicorn's own caps: connections at once
(`MAX_CONNECTIONS`, 503 beyond), a request head of at most 16 KiB, idle keep-alive connections
closed after `KEEP_ALIVE_S`.

With a token, every request needs it: `Authorization: Bearer TOKEN`, or the cookie (a digest
of the token) that `/?token=TOKEN` sets once, since a browser cannot put a header on an
EventSource; compared in constant time. Without one the config loader made sure the address
is a loopback one, and only requests whose Host is a loopback name are answered (DNS
rebinding).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.abc
import structlog

from muxtunnel.model import Endpoint
from muxtunnel.transport import bind_socket

__all__ = ["App", "serve_app"]

log = structlog.get_logger("muxtunnel.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Connections at once; more get 503 (a few browser tabs, each an event stream and a fetch).
MAX_CONNECTIONS = 64
#: Idle keep-alive connections are closed after this.
KEEP_ALIVE_S = 5.0
#: The request head's cap (the admin API's: muxtunnel.web.httpd).
MAX_HEAD_BYTES = 16 * 1024
#: After cancellation, how long open responses (event streams end at once) may take to finish.
SHUTDOWN_S = 2.0
COOKIE = "muxtunnel_token"


def _bearer_ok(scope: Scope, token: str) -> bool:
    headers = dict(scope.get("headers", ()))
    given = b""
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        given = authorization[7:].strip()
        return hmac.compare_digest(given, token.encode())
    if cookie := headers.get(b"cookie"):
        morsel = SimpleCookie(cookie.decode("latin-1")).get(COOKIE)
        given = morsel.value.encode() if morsel is not None else b""
    return hmac.compare_digest(given, _cookie_value(token).encode())


def _cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, not the token (no quoting, and a cookie
    read off a browser's disk does not give the admin API's token away)."""
    return hashlib.sha256(b"muxtunnel page cookie\0" + token.encode()).hexdigest()


def _loopback_name(host: str) -> bool:
    """A Host header naming this machine: localhost, 127.0.0.0/8 or ::1 (any port)."""
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def loopback_only(app: App) -> App:
    """`app`, answering only requests that name a loopback host: a page with no token is on
    loopback, and a web site that points its own name at 127.0.0.1 (DNS rebinding) must not
    read it from a browser on this machine."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
            if not _loopback_name(host):
                await _answer(send, 403, [], b"this page answers on localhost only\n")
                return None
        return await app(scope, receive, send)

    return guarded


def with_token(app: App, token: str) -> App:
    """`app`, behind the bearer token (header or cookie; `/?token=` sets the cookie)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and "token" in query:
            given = query["token"][0]
            ok = hmac.compare_digest(given.encode(), token.encode())
            status, headers = (303, [(b"location", b"/")]) if ok else (401, [])
            if ok:
                cookie = f"{COOKIE}={_cookie_value(token)}; HttpOnly; SameSite=Strict; Path=/"
                headers.append((b"set-cookie", cookie.encode()))
            await _answer(send, status, headers, b"" if ok else b"wrong token\n")
            return None
        if not _bearer_ok(scope, token):
            challenge = [(b"www-authenticate", b'Bearer realm="muxtunnel"')]
            await _answer(send, 401, challenge, b"missing or wrong token: open /?token=TOKEN\n")
            return None
        return await app(scope, receive, send)

    return guarded


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def _quiet_uvicorn() -> Iterator[None]:
    yield


async def serve_app(
    app: App,
    endpoint: Endpoint,
    *,
    name: str,
    sock: socket.socket | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `endpoint` (or on `sock`, bound there already) until cancelled; reports
    the bound port once it listens.

    Raises `TransportError` if the address cannot be bound.
    """
    import uvicorn  # only when a page is on (idle memory)

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop chatter

    if sock is None:
        sock = bind_socket(endpoint.host, endpoint.port)
    app = with_token(app, endpoint.token.value) if endpoint.token else loopback_only(app)
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=int(KEEP_ALIVE_S),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=int(SHUTDOWN_S),
    )
    config.load()
    server = uvicorn.Server(config)
    server.capture_signals = _quiet_uvicorn  # type: ignore[method-assign]  # ours, not its
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        port = int(sock.getsockname()[1])
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        token = endpoint.token is not None
        log.info(f"{name} listening", url=f"http://{host}:{port}/", token=token)
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_S + 1):
            await server.shutdown(sockets=[sock])
        sock.close()
