"""Real peers for the virtual-host tests: a threaded stdlib HTTP backend, the engine on a
loopback port (its own event loop in a thread, through anyio's blocking portal), clients.

Everything listens on 127.0.0.1 and every blocking call has a timeout.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from mux import MuxStream, Session
from mux.testing.pairs import session_pair
from muxtunnel.proxy import pipe
from muxtunnel.transport import listen_tcp, local_port
from muxtunnel.vhost import (
    DirectUpstream,
    RouteOptions,
    RouteTarget,
    UpstreamUnavailable,
    VhostConfig,
    VhostEngine,
    Visitor,
)
from muxtunnel.vhost.counters import CountersSnapshot

TIMEOUT_S = 10.0
_NO_OPTIONS = RouteOptions()


def require_tool(name: str) -> str:
    """The path of a command-line tool; skip without it, but fail under CI=true."""
    # nginx lives in /usr/sbin, which a non-login PATH may lack.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (scripts/install-system-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# ---------------------------------------------------------------------------------- backend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _BackendServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                chunk = int(line.split(b";")[0].strip(), 16)
                if chunk == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                left = chunk
                while left:
                    data = self.rfile.read(min(left, 1 << 16))
                    if not data:
                        raise ConnectionError("body cut short")
                    digest.update(data)
                    size += len(data)
                    left -= len(data)
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("body cut short")
                digest.update(data)
                size += len(data)
                left -= len(data)
        return size, digest.hexdigest()

    def _handle(self) -> None:
        self.server.requests += 1
        size, sha = self._read_body()
        path = self.path
        if path.startswith("/slow/"):
            time.sleep(float(path.split("/")[2]))
        if path == "/chunked-response":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "X-Hop")
            self.send_header("X-Hop", "secret")
            self.send_header("Keep-Alive", "timeout=5")
            self.send_header("X-End-To-End", "kept")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/bytes/"):
            total = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            block = b"x" * 65536
            while total:
                self.wfile.write(block[: min(total, len(block))])
                total -= min(total, len(block))
            return
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        report = {
            "backend": self.server.name,
            "method": self.command,
            "path": path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": size,
            "body_sha256": sha,
            "client_port": self.client_address[1],
        }
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_HEAD = _handle


class _BackendServer(ThreadingHTTPServer):
    daemon_threads = True
    name = ""
    requests = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a proxy that resets us on purpose (504, aborted visitor) is no test failure


@contextmanager
def backend(
    name: str, *, idle_timeout_s: float | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[_BackendServer]:
    """An HTTP/1.1 server on 127.0.0.1 that answers with JSON describing the request.

    Paths: `/slow/<s>` answers after s seconds, `/bytes/<n>` sends n bytes, `/status/<code>`,
    `/chunked-response`. `idle_timeout_s`: close keep-alive connections idle that long.
    `tls`: serve HTTPS with this (server) context.
    """
    handler = type("Handler", (_Handler,), {"timeout": idle_timeout_s})
    server = _BackendServer(("127.0.0.1", 0), handler)
    server.name = name
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


def address_of(server: Any) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


# ---------------------------------------------------------------------------------- engine


@dataclass
class Proxy:
    """The engine on two loopback ports: `http_port` (serve_http) and `tls_port` (serve_tls)."""

    portal: BlockingPortal
    engine: VhostEngine
    upstream: DirectUpstream
    http_port: int
    tls_port: int
    owners: dict[str, str] = field(default_factory=dict)

    def add_http(
        self,
        service: str,
        hosts: Iterable[str],
        address: tuple[str, int] | None,
        *,
        locations: Iterable[str] = ("/",),
        options: RouteOptions = _NO_OPTIONS,
        owner: str = "client-1",
    ) -> None:
        if address is not None:
            self.upstream.addresses[service] = address
        target = RouteTarget(service, owner, options)
        hosts, locations = list(hosts), list(locations)
        self.portal.call(lambda: self.engine.http_routes.add(target, hosts, locations))

    def add_tls(
        self,
        service: str,
        hosts: Iterable[str],
        address: tuple[str, int],
        *,
        options: RouteOptions = _NO_OPTIONS,
        owner: str = "client-1",
    ) -> None:
        self.upstream.addresses[service] = address
        target = RouteTarget(service, owner, options)
        hosts = list(hosts)
        self.portal.call(lambda: self.engine.tls_routes.add(target, hosts))

    def snapshot(self) -> CountersSnapshot:
        return self.portal.call(self.engine.snapshot)


class MuxUpstream(DirectUpstream):
    """Reaches each service over a stream of a loopback mux session, as `listen` reaches
    `up`: the session's far side (`serve_far_side`) dials the address and pipes."""

    def __init__(self, session: Session) -> None:
        super().__init__({}, timeout_s=2.0)
        self.session = session

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        address = self.addresses.get(target.service)
        if address is None:
            raise UpstreamUnavailable(f"service {target.service!r} has no address")
        return await self.session.open_stream(f"{address[0]} {address[1]}\n".encode())


async def serve_far_side(session: Session) -> None:
    """Dial the address each stream names in its first line, and pipe (a stand-in `up`)."""

    async def dial(stream: MuxStream) -> None:
        first = b""
        while b"\n" not in first:
            first += await stream.receive()
        line, _, rest = first.partition(b"\n")
        host, port = line.decode().split()
        try:
            sock = await anyio.connect_tcp(host, int(port))
        except OSError:
            stream.reset()  # the service is down: the stream fails before answering
            return
        if rest:
            await sock.send(rest)
        await pipe(sock, stream)

    async with anyio.create_task_group() as tg:
        while True:
            tg.start_soon(dial, await session.accept_stream())


@contextmanager
def running_proxy(
    config: VhostConfig | None = None,
    tls_context: ssl.SSLContext | None = None,
    *,
    muxed: bool = False,
) -> Iterator[Proxy]:
    """The engine on loopback; `muxed`: services are reached over a mux session (as in
    `listen`, where plain keep-alive requests are relayed by callbacks), else dialled."""
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        upstream: DirectUpstream
        far_side = None
        if muxed:
            near, far = stack.enter_context(portal.wrap_async_context_manager(session_pair()))
            far_side = portal.start_task_soon(serve_far_side, far)
            upstream = MuxUpstream(near)
        else:
            upstream = DirectUpstream({}, timeout_s=2.0)
        engine = VhostEngine(upstream, config, tls_context=tls_context)
        http_listener = portal.call(listen_tcp, "127.0.0.1", 0)
        tls_listener = portal.call(listen_tcp, "127.0.0.1", 0)
        tasks = [
            portal.start_task_soon(http_listener.serve, engine.serve_http),
            portal.start_task_soon(tls_listener.serve, engine.serve_tls),
        ]
        try:
            yield Proxy(
                portal, engine, upstream, local_port(http_listener), local_port(tls_listener)
            )
        finally:
            for task in tasks:
                task.cancel()
            if far_side is not None:
                far_side.cancel()
            portal.call(http_listener.aclose)
            portal.call(tls_listener.aclose)


# ---------------------------------------------------------------------------------- clients


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result

    def seen_header(self, name: str) -> list[str]:
        """Values of `name` in the request the backend saw (from its JSON report)."""
        return [v for k, v in self.json()["headers"] if k.lower() == name.lower()]


def request(
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request through the proxy with http.client (on `connection` to keep it alive)."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    all_headers = {"Host": host, **(headers or {})}
    chunked = body is not None and not isinstance(body, bytes)
    conn.request(method, path, body=body, headers=all_headers, encode_chunked=chunked)
    response = conn.getresponse()
    data = response.read()
    if connection is None:
        conn.close()
    return Reply(response.status, response.headers, data)


def raw_exchange(
    port: int, data: bytes, *, until_closed: bool = True, wait_s: float = TIMEOUT_S
) -> bytes:
    """Send raw bytes, read until the proxy closes (or `wait_s` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not until_closed:
                break
        return b"".join(chunks)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def read_responses(sock: socket.socket, count: int) -> list[RawResponse]:
    """`count` responses read in order from one socket (pipelining), Content-Length framed
    or chunked; a 1xx counts as a response of its own."""
    reader = sock.makefile("rb")
    responses = []
    for _ in range(count):
        status_line = reader.readline(65536)
        if not status_line:
            raise ConnectionError(f"closed after {len(responses)} responses")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := reader.readline(65536)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding") == "chunked":
            while (size := int(reader.readline(1024).split(b";")[0], 16)) > 0:
                body += reader.read(size)
                reader.readline(16)
            while reader.readline(65536) not in (b"\r\n", b""):
                pass
        elif "content-length" in headers:
            body = reader.read(int(headers["content-length"]))
        responses.append(RawResponse(status, headers, body))
    return responses
