"""`up`'s HTTP inspector: the recent requests through its http services, and one-click replay.

The requests come from the passive tap (`muxtunnel.httptap`): this module reads its ring and
never sees a live connection. Replay sends a recorded request again, as it was (its body only
if it was kept whole), straight to the service's local address (from the status snapshot), and
records the answer in the ring like any other exchange, marked with what it replayed.

ngrok's habit: by default at 127.0.0.1:4040; if that port is busy, the next free one of the
`INSPECT_PORTS_TRIED` after it (said once), or none (with a warning: then nothing is captured).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import h11
import structlog

from muxtunnel.captures import Captures, Exchange
from muxtunnel.model import Endpoint
from muxtunnel.status import Status
from muxtunnel.transport import TransportError, bind_socket, connect
from muxtunnel.web.asgi import App, serve_app
from muxtunnel.web.dashboard import static_dir

__all__ = ["bind_first_free", "make_app", "replay", "run_inspector"]

log = structlog.get_logger("muxtunnel.web")

#: A replay's whole exchange: connect, send, and the answer (bodies beyond the cap are read
#: and dropped, so a large answer still ends).
REPLAY_TIMEOUT_S = 10.0
#: Request headers that belonged to the visitor's connection, not to the request.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade"}


def _local_address(local: str) -> tuple[str, int]:
    host, _, port = local.rpartition(":")
    return host.strip("[]"), int(port)


async def replay(
    exchange: Exchange, local: str, captures: Captures, *, timeout_s: float = REPLAY_TIMEOUT_S
) -> Exchange:
    """Send `exchange`'s request to `local` (HOST:PORT) again; the new exchange, recorded."""
    started, t0 = time.time(), time.monotonic()
    headers = [(k, v) for k, v in exchange.request_headers if k.lower() not in _HOP_BY_HOP]
    record = Exchange(
        id=captures.next_id(), service=exchange.service, peer="replay", started=started,
        method=exchange.method, target=exchange.target,
        request_headers=(*headers, ("connection", "close")), request_body=exchange.request_body,
        request_bytes=len(exchange.request_body), replay_of=exchange.id,
    )  # fmt: skip
    response: dict[str, Any] = {}
    try:
        with anyio.fail_after(timeout_s):
            await _exchange(record, _local_address(local), response, captures.body_cap_bytes)
        record = dataclasses.replace(record, duration_s=time.monotonic() - t0, **response)
    except (TransportError, TimeoutError, h11.ProtocolError, anyio.EndOfStream,
            anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:  # fmt: skip
        error = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            error = f"no whole answer within {timeout_s} s"
        record = dataclasses.replace(record, error=f"replay failed: {error}", **response)
    captures.add(record)
    return record


async def _exchange(
    record: Exchange, address: tuple[str, int], response: dict[str, Any], cap_bytes: int
) -> None:
    connection = h11.Connection(h11.CLIENT)
    stream = await connect(*address, timeout_s=REPLAY_TIMEOUT_S)
    async with stream:
        request = h11.Request(
            method=record.method, target=record.target, headers=list(record.request_headers)
        )
        data = connection.send(request) or b""
        if record.request_body:
            data += connection.send(h11.Data(data=record.request_body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        await stream.send(data)
        body, size = bytearray(), 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    connection.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    connection.receive_data(b"")
                continue
            if isinstance(event, h11.Response):
                response.update(status=event.status_code, reason=event.reason.decode("latin-1"),
                                response_headers=tuple((k.decode("latin-1"), v.decode("latin-1"))
                                                       for k, v in event.headers))  # fmt: skip
            elif isinstance(event, h11.Data):
                size += len(event.data)
                body += event.data[: max(0, cap_bytes - len(body))]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        response.update(response_body=bytes(body), response_bytes=size)


def _services(status: Status) -> dict[str, str]:
    """The http services and their local addresses."""
    return {row.name: row.local for row in status.services if row.type == "http" and row.local}


def _matches(exchange: Exchange, query: str) -> bool:
    text = f"{exchange.service} {exchange.method} {exchange.target} {exchange.status or ''}"
    return query.lower() in text.lower()


def make_app(status: Callable[[], Status], captures: Captures) -> App:
    """The inspector's routes: the page, its files, the requests, one request, replay."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    folder = static_dir()

    async def index(request: Any) -> Any:
        return FileResponse(f"{folder}/inspector.html", headers={"cache-control": "no-store"})

    async def requests(request: Any) -> Any:
        query = request.query_params.get("q", "")
        found = [e.summary() for e in reversed(captures.exchanges()) if _matches(e, query)]
        return JSONResponse({
            "requests": found, "services": _services(status()),
            "recorded": captures.recorded, "abandoned": captures.abandoned,
        })  # fmt: skip

    def _find(request: Any) -> Exchange | None:
        try:
            return captures.get(int(request.path_params["id"]))
        except ValueError:
            return None

    async def one(request: Any) -> Any:
        exchange = _find(request)
        if exchange is None:
            return JSONResponse({"error": "no such request (the ring keeps the last ones)"}, 404)
        return JSONResponse(exchange.to_dict())

    async def do_replay(request: Any) -> Any:
        if request.headers.get("x-requested-with") != "muxtunnel":
            # A header a cross-site form cannot send, and a cross-site script only after a
            # preflight nobody answers: another site open in the browser cannot replay.
            return JSONResponse({"error": "replay needs X-Requested-With: muxtunnel"}, 403)
        exchange = _find(request)
        if exchange is None:
            return JSONResponse({"error": "no such request (the ring keeps the last ones)"}, 404)
        if not exchange.replayable:
            return JSONResponse({"error": "its body was cut at the size cap: cannot replay"}, 409)
        local = _services(status()).get(exchange.service)
        if local is None:
            return JSONResponse({"error": f"no http service {exchange.service!r} now"}, 409)
        done = await replay(exchange, local, captures)
        return JSONResponse(done.to_dict(), 200 if done.error is None else 502)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/requests", requests),
            Route("/api/requests/{id}", one),
            Route("/api/requests/{id}/replay", do_replay, methods=["POST"]),
            Mount("/static", StaticFiles(directory=folder)),
        ]
    )


def bind_first_free(endpoint: Endpoint, tries: int) -> socket.socket | None:
    """A socket on `endpoint`, or on the first free port of the `tries - 1` after it.

    A busy port is said once; None (with a warning) when all are busy. `TransportError` for
    any other failure, or a busy port when `tries` is 1.
    """
    last = min(endpoint.port + tries, 65536)
    for port in range(endpoint.port, last):
        try:
            sock = bind_socket(endpoint.host, port)
        except TransportError as exc:
            if tries == 1 or "already in use" not in str(exc):
                raise
            continue
        if port != endpoint.port:
            log.warning("inspector port busy", busy=endpoint.port, using=port)
        return sock
    log.warning(
        "no free port for the inspector: requests are not captured",
        tried=f"{endpoint.port}-{last - 1}",
        hint="set --inspect HOST:PORT, or --no-inspect",
    )
    return None


async def run_inspector(
    endpoint: Endpoint,
    status: Callable[[], Status],
    captures: Captures,
    *,
    tries: int = 1,
    task_status: anyio.abc.TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the inspector until cancelled; reports its port (None: no free port, not served)."""
    sock = bind_first_free(endpoint, tries)
    if sock is None:
        task_status.started(None)
        return
    await serve_app(
        make_app(status, captures), endpoint, name="inspector", sock=sock, task_status=task_status
    )
