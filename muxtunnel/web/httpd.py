"""A tiny HTTP/1.1 server on anyio for the metrics endpoint and the admin API.

GET and HEAD only, one request per connection (`Connection: close`), headers at most 16 KiB and
10 s to send them: it serves a scraper and an operator, not the internet. With a token, every
request needs `Authorization: Bearer TOKEN` (compared in constant time); without one the
endpoint must be on loopback (the config loader makes sure).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from muxtunnel.model import Endpoint
from muxtunnel.transport import listen_tcp, local_port

__all__ = ["Response", "Route", "serve_http"]

log = structlog.get_logger("muxtunnel.httpd")

MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method"
            " Not Allowed", 500: "Internal Server Error"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[[], Response]


def _respond(response: Response, head_only: bool, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n"
    ).encode("ascii")
    return head if head_only else head + response.body


def _error(status: int, message: str) -> Response:
    return Response(status, f'{{"error": "{message}"}}\n'.encode())


async def _read_head(stream: anyio.abc.ByteStream) -> bytes | None:
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEADER_BYTES:
            return None
        try:
            buffer += await stream.receive(4096)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return bytes(buffer[: buffer.index(b"\r\n\r\n")])


def handle_request(head: bytes, routes: dict[str, Route], token: str | None) -> tuple[bytes, bool]:
    """Answer one request head: the response bytes, and whether it was a HEAD request."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _respond(_error(400, "bad request line"), False), False
    method, target, _ = parts
    head_only = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _respond(_error(405, "only GET"), False, "Allow: GET, HEAD\r\n"), False
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if token is not None:
        given = headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            challenge = 'WWW-Authenticate: Bearer realm="muxtunnel"\r\n'
            refusal = _error(401, "missing or wrong bearer token")
            return _respond(refusal, head_only, challenge), head_only
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        return _respond(_error(404, "no such path"), head_only), head_only
    try:
        response = route()
    except Exception:
        log.exception("http handler failed", path=target)
        response = _error(500, "internal error")
    return _respond(response, head_only), head_only


async def serve_http(
    endpoint: Endpoint,
    routes: dict[str, Route],
    *,
    name: str,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` (path -> handler) on `endpoint` until cancelled; reports the bound port.

    Raises `TransportError` if the address cannot be bound.
    """
    listener = await listen_tcp(endpoint.host, endpoint.port)
    port = local_port(listener)
    token = endpoint.token.value if endpoint.token else None
    log.info(f"{name} listening", address=f"{endpoint.host}:{port}", token=token is not None)
    task_status.started(port)

    async def connection(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                head = await _read_head(stream)
                if head is None:
                    return
                data, _ = handle_request(head, routes, token)
                try:
                    await stream.send(data)
                except anyio.BrokenResourceError:
                    pass

    async with listener:
        await listener.serve(connection)
