"""A tiny HTTP/1.1 server on anyio for the metrics endpoint and the admin API.

GET and HEAD only, one request per connection (`Connection: close`): it serves a scraper and an
operator, not the internet, and bounds what anyone else can hold:

- the request head: at most 16 KiB, within 5 s of connecting;
- connections waiting for their head: at most 32; a new one evicts the oldest (a scraper sends
  its request at once, so it is never the oldest: stalled connections cannot lock it out);
- with a token, every request needs `Authorization: Bearer TOKEN` (compared in constant time),
  checked as soon as that header line arrives: a wrong token is answered 401 without waiting
  for the rest of the head. Without one the endpoint must be on loopback (the config loader
  makes sure).

The head is parsed by hand, line by line, because the token check wants each line as it
arrives; h11 hands out a request only once its whole head is in.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from muxtunnel.admission import AdmissionGate
from muxtunnel.log import Refusals
from muxtunnel.model import Endpoint
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.transport import TransportError, abort, listen_tcp, local_port, peer_address

__all__ = ["Response", "Route", "serve_http"]

log = structlog.get_logger("muxtunnel.httpd")

MAX_HEADER_BYTES = 16 * 1024
#: The whole request head must arrive within this (the control port's pre-auth deadline).
HEAD_TIMEOUT_S = 5.0
#: Connections waiting for their request head, per endpoint; beyond, the oldest is evicted.
MAX_WAITING_CONNECTIONS = 32
#: Time to write the answer once the request is in (a metrics page is a few KiB).
SEND_TIMEOUT_S = 10.0
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


#: What `_read_head` returns for a request whose Authorization line was wrong.
DENIED = b"denied"


def _token_ok(line: bytes, token: str) -> bool:
    """Does an `Authorization:` header line carry `Bearer TOKEN`?"""
    _, _, value = line.decode("latin-1").partition(":")
    scheme, _, credential = value.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


async def _read_head(stream: anyio.abc.ByteStream, token: str | None = None) -> bytes | None:
    """The request head (None: the peer gave up or sent too much; `DENIED`: a wrong token).

    With a token, each header line is looked at as it arrives: a wrong Authorization line ends
    the wait at once.
    """
    buffer = bytearray()
    scanned = 0  # bytes of complete lines already looked at
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEADER_BYTES:
            return None
        try:
            buffer += await stream.receive(4096)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
        if token is not None:
            end = buffer.rfind(b"\r\n")
            if end > scanned:
                for line in bytes(buffer[scanned:end]).split(b"\r\n"):
                    if line[:14].lower() == b"authorization:" and not _token_ok(line, token):
                        return DENIED
                scanned = end + 2
    return bytes(buffer[: buffer.index(b"\r\n\r\n")])


def _denied(head_only: bool = False) -> bytes:
    challenge = 'WWW-Authenticate: Bearer realm="muxtunnel"\r\n'
    return _respond(_error(401, "missing or wrong bearer token"), head_only, challenge)


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
        given = f"authorization: {headers.get('authorization', '')}".encode("latin-1", "replace")
        if not _token_ok(given, token):
            return _denied(head_only), head_only
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
    refusals: Refusals | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` (path -> handler) on `endpoint` until cancelled; reports the bound port.

    Accept errors and evicted or timed-out connections are counted in `refusals` (the process's
    own, so the metrics show them). Raises `TransportError` if the address cannot be bound.
    """
    refusals = refusals if refusals is not None else Refusals(log)
    try:
        listener = await listen_tcp(endpoint.host, endpoint.port, name=name, refusals=refusals)
    except TransportError as exc:  # not the control port: say which one, and its flag
        flag = "--admin" if name.startswith("admin") else f"--{name}"
        raise TransportError(f"the {name} endpoint ({flag}): {exc}") from None
    port = local_port(listener)
    token = endpoint.token.value if endpoint.token else None
    address = format_host_port(endpoint.host, port)
    log.info(f"{name} listening", address=address, token=token is not None)
    task_status.started(port)
    waiting = AdmissionGate(refusals, kind="http", what=name)

    async def connection(stream: anyio.abc.SocketStream) -> None:
        address = peer_address(stream)
        ticket = None
        if address is not None:
            total = MAX_WAITING_CONNECTIONS
            ticket = waiting.admit(address_key(address[0]), total, total)
        if ticket is None:
            await abort(stream)
            return
        async with stream:
            head: bytes | None = None
            try:
                with ticket.scope, anyio.move_on_after(HEAD_TIMEOUT_S) as deadline:
                    head = await _read_head(stream, token)
            finally:
                waiting.release(ticket)
            if deadline.cancelled_caught:
                refusals.refuse(
                    "http_head_timeout",
                    f"{name}: no request within the deadline",
                    timeout_s=HEAD_TIMEOUT_S,
                )
            if head is None:
                return
            data = _denied() if head is DENIED else handle_request(head, routes, token)[0]
            if data.startswith(b"HTTP/1.1 401"):
                refusals.refuse("http_token", f"{name}: missing or wrong bearer token")
            with anyio.move_on_after(SEND_TIMEOUT_S):
                try:
                    await stream.send(data)
                except anyio.BrokenResourceError:
                    pass

    async with listener:
        await listener.serve(connection)
