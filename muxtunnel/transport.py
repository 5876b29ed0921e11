"""The one seam between muxtunnel and the network: carriers and visitor sockets.

Everything above this module sees `anyio.abc.ByteStream`s; socket options and the translation of
connect/bind failures into readable errors happen here, once.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from mux import read_one_chunk_per_wait


class TransportError(Exception):
    """A connect or bind failed; the message is meant for the user."""


def tune_socket(stream: anyio.abc.SocketStream) -> None:
    """TCP_NODELAY: frames of many streams share the carrier, none should wait for Nagle."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _OneChunkListener(anyio.abc.Listener[anyio.abc.SocketStream]):
    """A TCP listener whose accepted streams read one chunk per wait (see above)."""

    def __init__(self, inner: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        self._inner = inner

    async def serve(
        self,
        handler: Callable[[anyio.abc.SocketStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        async def serve_one(stream: anyio.abc.SocketStream) -> None:
            read_one_chunk_per_wait(stream)
            await handler(stream)

        await self._inner.serve(serve_one, task_group)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


async def connect(host: str, port: int, *, timeout_s: float = 10.0) -> anyio.abc.SocketStream:
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise TransportError(f"connecting to {host}:{port} timed out after {timeout_s} s") from None
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    tune_socket(stream)
    read_one_chunk_per_wait(stream)
    return stream


async def listen_tcp(host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, backlog=1024)
    except OSError as exc:
        raise TransportError(bind_error(host, port, "tcp", exc)) from None
    return _OneChunkListener(listener)


async def listen_udp(host: str, port: int) -> anyio.abc.UDPSocket:
    try:
        return await anyio.create_udp_socket(local_host=host, local_port=port)
    except OSError as exc:
        raise TransportError(bind_error(host, port, "udp", exc)) from None


def bind_error(host: str, port: int, kind: str, exc: OSError) -> str:
    # uvloop's create_datagram_endpoint raises an errno-less OSError("could not bind to
    # local_addr ...") *from* the real one: look through such wrappers for the errno.
    while exc.errno is None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if exc.errno == errno.EADDRINUSE:
        return f"{kind} port {port} on {host} is already in use"
    if exc.errno == errno.EACCES:
        return f"no permission to bind {kind} port {port} on {host}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"address {host} is not available on this machine"
    return f"cannot bind {kind} {host}:{port}: {exc.strerror or exc}"


def local_port(listener: anyio.TypedAttributeProvider) -> int:
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


def peer_address(stream: anyio.abc.SocketStream) -> tuple[str, int]:
    address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address), 0


_LINGER_ZERO = struct.pack("ii", 1, 0)


async def abort(stream: anyio.abc.ByteStream) -> None:
    """Close so the other end sees a failure: RST for TCP sockets, reset for mux streams."""
    reset = getattr(stream, "reset", None)
    if callable(reset):
        reset()
        await stream.aclose()
        return
    if isinstance(stream, anyio.abc.SocketStream):
        try:
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except (OSError, ValueError):  # already closed (uvloop says so with ValueError)
            pass
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (OSError, anyio.BrokenResourceError):
            pass
