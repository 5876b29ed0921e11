"""Helpers for the operations tests: certificates, an in-process server and client, services.

Everything runs on 127.0.0.1 inside the test's event loop (anyio, asyncio backend), except the
few tests that check what the `muxtunnel` command prints and exits with.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from muxtunnel.app import serve
from muxtunnel.client import Client
from muxtunnel.model import ClientConfig, Secret, ServerConfig, ServiceSpec
from muxtunnel.server import Server
from muxtunnel.tls import format_fingerprint, generate_self_signed

TOKEN = Secret("ops-test-token-0123456789")
#: Bound for every wait in these tests: generous for a loaded 2-core machine.
WAIT_S = 15.0


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str
    fingerprint: str


def make_pair(folder: Path, name: str, *, client: bool = False) -> Pair:
    cert_pem, key_pem, der = generate_self_signed(
        ["localhost", "127.0.0.1"] if not client else [name], client=client
    )
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return Pair(str(cert), str(key), format_fingerprint(der))


def server_config(**changes: object) -> ServerConfig:
    base = {"bind_host": "127.0.0.1", "bind_port": 0, "public_host": "127.0.0.1", "token": TOKEN}
    base.update(changes)
    return ServerConfig(**base)  # type: ignore[arg-type]


def client_config(port: int, *services: ServiceSpec, **changes: object) -> ClientConfig:
    base: dict[str, object] = {
        "server_host": "127.0.0.1",
        "server_port": port,
        "token": TOKEN,
        "services": services,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    base.update(changes)
    return ClientConfig(**base)  # type: ignore[arg-type]


def tcp(name: str, local_port: int, **changes: object) -> ServiceSpec:
    return ServiceSpec(name, "tcp", "127.0.0.1", local_port, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def running_server(config: ServerConfig) -> AsyncIterator[Server]:
    server = Server(config)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def running_client(config: ClientConfig, *, wait: bool = True) -> AsyncIterator[Client]:
    client = Client(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        if wait:
            await wait_until(lambda: all(s.public for s in client.services.values()))
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def serving(target: Server | Client) -> AsyncIterator[dict[str, int]]:
    """Run `target` as `listen`/`up` do, with its metrics and admin endpoints; yields their
    ports. A client's services are registered by then."""
    async with anyio.create_task_group() as tg:
        ports = await tg.start(serve, target)
        if isinstance(target, Client):
            await wait_until(lambda: all(s.public for s in target.services.values()))
        try:
            yield ports
        finally:
            tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.02)


def public_port(client: Client, name: str) -> int:
    public = client.services[name].public
    assert public is not None
    return int(public.rsplit(":", 1)[1])


@asynccontextmanager
async def echo_service() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
                await stream.send_eof()
            except (anyio.BrokenResourceError, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def echo_through(port: int, payload: bytes, chunk: int = 64 * 1024) -> bytes:
    """Send `payload` to 127.0.0.1:port while reading the echo; returns what came back."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        received = bytearray()

        async def reader() -> None:
            async for data in stream:
                received.extend(data)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for offset in range(0, len(payload), chunk):
                await stream.send(payload[offset : offset + chunk])
            await stream.send_eof()
        return bytes(received)


def free_port() -> int:
    """A TCP port nobody listens on right now (for the processes tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
