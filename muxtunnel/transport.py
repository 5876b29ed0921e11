"""The one seam between muxtunnel and the network: TCP carriers and visitors (its UDP half, the
endpoints UDP services use, is `muxtunnel.datagrams`).

Above this module there are anyio `ByteStream`s and two kinds of failure, never the foreign
exceptions of the socket layer (httpcore's `map_exceptions` at its backend is the model):

- `TransportError` when a connect or a bind fails; its message is meant for the user;
- anyio's `EndOfStream`, `BrokenResourceError` and `ClosedResourceError` when a stream ends or
  fails. anyio's asyncio socket streams raise only those from `receive`/`send`/`send_eof`/
  `aclose`; what can still surface is caught here: `OSError`, `AttributeError` (uvloop hands
  out a None raw socket once the peer is gone) and `ValueError` (uvloop's `setsockopt` on a
  closed socket). So `peer_address` returns None for a connection that is already gone, and
  `abort` never raises. Nobody above catches `OSError` or `AttributeError` for a socket
  (`tests/test_layering.py` checks).

What the carriers and visitors need of their sockets is also set here, once: TCP_NODELAY
(frames of many streams share a carrier, none should wait for Nagle), and accepted or
connected sockets read only while someone waits, at most one chunk per wait (backpressure and
a fair event loop; the anyio internals this takes are in `mux._anyio_seam`).

Every TCP listener of the process (control port, public ports, admin API, metrics) runs the
accept loop below: an accept error (a process out of file descriptors) makes it back off and
retry, never end; a handler's bug costs that connection only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.abc
import structlog
from anyio.streams.stapled import MultiListener

from mux import adopt_accepted, listening_socket, pause_reading, peer_name, read_one_chunk_per_wait
from muxtunnel.accept import SETUP_SLOT, Acceptor, Backoff, SetupSlot, setup_done, take_slot
from muxtunnel.log import Refusals
from muxtunnel.specs import format_host_port

__all__ = [
    "CONNECT_TIMEOUT_S",
    "Address",
    "ConnectionRefused",
    "TcpListener",
    "TransportError",
    "abort",
    "bind_error",
    "bind_socket",
    "connect",
    "listen_tcp",
    "local_address",
    "local_port",
    "peer_address",
    "setup_done",
    "take_slot",
]

#: How long a TCP connect may take (the server, or a local service) before it counts as failed.
CONNECT_TIMEOUT_S = 10.0
#: Connections the kernel may queue per listener before we accept them: room for a burst of
#: new visitors (picked; the kernel caps it at net.core.somaxconn, 4096 since Linux 5.4).
LISTEN_BACKLOG = 1024

log = structlog.get_logger("muxtunnel.transport")

Address = tuple[str, int]
#: What a listener's `serve` calls with each connection.
Handler = Callable[[anyio.abc.SocketStream], Any]


class TransportError(Exception):
    """A connect or bind failed; the message is meant for the user."""


class ConnectionRefused(TransportError):
    """A connect was refused: nothing listens at that address (now)."""


def _tune(stream: anyio.abc.SocketStream) -> None:
    """TCP_NODELAY: frames of many streams share the carrier, none should wait for Nagle."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpListener(anyio.abc.Listener[anyio.abc.SocketStream]):
    """A TCP listener with an accept loop of our own (anyio's lets the first accept error out).

    Accepted sockets read only while someone waits, one chunk a wait. An accept that fails,
    out of file descriptors (EMFILE, ENFILE), buffers (ENOBUFS, ENOMEM) or anything else, never
    ends the loop: the connection stays in the kernel's queue, the loop sleeps (5 ms, doubling
    to 1 s: Go's net/http `Server.Serve`), counts the failure and logs it at counts 1, 2, 4, ...
    A handler that raises costs its own connection only (aborted, logged). anyio's asyncio
    listeners are accepted from by `muxtunnel.accept.Acceptor` (batches per wake-up).
    """

    def __init__(
        self, inner: anyio.abc.Listener[anyio.abc.SocketStream], name: str, refusals: Refusals
    ) -> None:
        self._inner = inner
        listeners = inner.listeners if isinstance(inner, MultiListener) else [inner]
        self._sockets = cast(Sequence[anyio.abc.SocketListener], listeners)
        self.name = name
        self.refusals = refusals
        self.handler_failures = 0
        self._acceptors: set[Acceptor] = set()

    async def serve(
        self,
        handler: Handler,
        task_group: anyio.abc.TaskGroup | None = None,
        *,
        setting_up: int | None = None,
    ) -> None:
        """Accept and hand each connection to `handler` in `task_group` until cancelled.

        With `setting_up`, at most that many connections are between their accept and the
        handler's `setup_done()` (or its end): a flood of new connections then waits in the
        kernel's queue instead of filling the event loop with their setups, and what the loop
        already serves (other services' visitors) keeps its turn.
        """
        slots = anyio.Semaphore(setting_up) if setting_up else None
        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            async with anyio.create_task_group() as loops:
                for sock in self._sockets:
                    loops.start_soon(self._accept_loop, sock, handler, task_group, slots)

    async def _accept_loop(
        self,
        sock: anyio.abc.SocketListener,
        handler: Handler,
        task_group: anyio.abc.TaskGroup,
        slots: anyio.Semaphore | None,
    ) -> None:
        backoff = Backoff(self._accept_failed)
        raw = listening_socket(sock)
        if raw is not None:  # asyncio: accept ourselves, in batches per wake-up

            def spawn(client: socket.socket) -> None:
                task_group.start_soon(self._adopt_one, handler, client, slots)

            acceptor = Acceptor(raw, spawn, slots, backoff)
            self._acceptors.add(acceptor)
            try:
                await acceptor.run()
            finally:
                self._acceptors.discard(acceptor)
            return
        while True:  # any other listener: anyio's accept
            if slots is not None:
                await take_slot(slots)
            try:
                stream = await sock.accept()
            except OSError as exc:
                if slots is not None:
                    slots.release()
                await backoff.failed(exc)
                continue
            backoff.reset()
            task_group.start_soon(self._serve_one, handler, stream, slots)

    def _accept_failed(self, exc: OSError, backoff_s: float) -> None:
        self.refusals.refuse(
            "accept_error",
            "accept failed; backing off",
            listener=self.name,
            error=exc.strerror or str(exc),
            errno=exc.errno,
            backoff_s=backoff_s,
        )

    async def _adopt_one(
        self, handler: Handler, client: socket.socket, slots: anyio.Semaphore | None
    ) -> None:
        try:
            stream = await adopt_accepted(client)
        except OSError:  # gone before its transport was made: nothing to serve
            client.close()
            SetupSlot(slots).release()
            return
        await self._serve_one(handler, stream, slots)

    async def _serve_one(
        self, handler: Handler, stream: anyio.abc.SocketStream, slots: anyio.Semaphore | None
    ) -> None:
        slot = SetupSlot(slots)
        token = SETUP_SLOT.set(slot)
        try:
            read_one_chunk_per_wait(stream)
            pause_reading(stream)
            await handler(stream)
        except Exception:
            # A bug, and a peer may be able to trigger it at will: the first tracebacks, then
            # one at each doubling count.
            self.handler_failures += 1
            count = self.handler_failures
            if count & (count - 1) == 0:
                log.exception("connection handler failed", listener=self.name, count=count)
            await abort(stream)
        finally:
            slot.release()
            SETUP_SLOT.reset(token)

    async def aclose(self) -> None:
        for acceptor in list(self._acceptors):
            acceptor.close()  # its reader goes before the socket
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


async def connect(
    host: str,
    port: int,
    *,
    timeout_s: float = CONNECT_TIMEOUT_S,
    local_host: str | None = None,
    interface: str | None = None,
) -> anyio.abc.SocketStream:
    """A TCP connection to `host:port` (from `local_host`, through `interface` if given; the
    name resolved anew each time); `TransportError` if it cannot be made in time."""
    try:
        with anyio.fail_after(timeout_s):
            if interface is not None:
                stream = await _connect_through(host, port, interface, local_host)
            else:
                stream = await anyio.connect_tcp(host, port, local_host=local_host)
    except TimeoutError:
        where = format_host_port(host, port)
        raise TransportError(f"connecting to {where} timed out after {timeout_s} s") from None
    except OSError as exc:
        cause = exc.__cause__ or exc  # anyio's: one error, or a group of one per address
        causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause]
        refused = all(isinstance(cause, ConnectionRefusedError) for cause in causes)
        kind = ConnectionRefused if refused else TransportError
        where = format_host_port(host, port)
        raise kind(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        _tune(stream)
    except (OSError, AttributeError, ValueError):  # ValueError: its descriptor is -1
        # Reset as it opened: anyio under uvloop then has no raw socket, and fails with
        # AttributeError (see `peer_address`). A connect that failed, not a crash: a client
        # that resumes while its server restarts retries.
        await stream.aclose()
        where = format_host_port(host, port)
        raise TransportError(f"the connection to {where} closed as it opened") from None
    read_one_chunk_per_wait(stream)
    return stream


async def _connect_through(
    host: str, port: int, interface: str, local_host: str | None
) -> anyio.abc.SocketStream:
    """`connect` bound to `interface` (SO_BINDTODEVICE: the route through it whatever the
    routing table prefers); each resolved address in turn, the first that answers."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            if local_host is not None:
                sock.bind((local_host, 0))
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            return await anyio.abc.SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    if not errors:
        raise OSError(f"{host} resolved to no address")
    if len(errors) == 1:
        raise errors[0]
    raise OSError("; ".join(map(str, errors))) from ExceptionGroup("connect", errors)


async def listen_tcp(
    host: str, port: int, *, name: str = "tcp", refusals: Refusals | None = None,
    reuse_port: bool = False,
) -> TcpListener:  # fmt: skip
    """A TCP listener on `host:port` (0: any free port; `reuse_port`: SO_REUSEPORT, shared);
    `TransportError` if it cannot bind. Its `serve` never ends for an accept error (see
    `TcpListener`): those are counted in `refusals` as "accept_error", `name` saying which."""
    try:
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port
        )
    except OSError as exc:
        raise TransportError(bind_error(host, port, "tcp", exc)) from None
    return TcpListener(listener, name, refusals if refusals is not None else Refusals(log))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` for a server of another library (the web pages'
    ASGI server); `TransportError` if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise TransportError(bind_error(host, port, "tcp", exc)) from None
    return sock


def bind_error(host: str, port: int, kind: str, exc: OSError) -> str:
    """What to tell the user of a failed bind (`kind` "tcp" or "udp")."""
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
    return f"cannot bind {kind} {format_host_port(host, port)}: {exc.strerror or exc}"


def local_port(listener: anyio.TypedAttributeProvider) -> int:
    """The port a listener is bound to."""
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


def peer_address(stream: anyio.abc.ByteStream) -> Address | None:
    """The peer's address, or None when its connection is already gone.

    A peer that connects and resets at once can be gone before its handler runs; anyio under
    uvloop then fails with AttributeError (the raw socket is None), not with OSError.
    """
    address = peer_name(stream)  # noted at the accept: no system call
    if address is None:
        try:
            address = stream.extra(anyio.abc.SocketAttribute.remote_address)
        except (OSError, AttributeError, anyio.TypedAttributeLookupError):  # asyncio: closed
            return None
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address), 0


def local_address(stream: anyio.abc.ByteStream) -> Address | None:
    """Our end's address of a connection, or None when it is already gone (as `peer_address`)."""
    try:
        address = stream.extra(anyio.abc.SocketAttribute.local_address)
    except (OSError, AttributeError, anyio.TypedAttributeLookupError):  # asyncio: closed
        return None
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address), 0


_LINGER_ZERO = struct.pack("ii", 1, 0)


async def abort(stream: anyio.abc.ByteStream) -> None:
    """Close so the other end sees a failure: RST for TCP sockets, reset for mux streams.

    Anything with a `reset()` (a mux stream, or a wrapper of one) is reset; a TCP socket gets
    SO_LINGER 0, so that closing it sends RST. Never raises, and finishes even when cancelled.
    """
    with anyio.CancelScope(shield=True):
        reset = getattr(stream, "reset", None)
        if callable(reset):
            reset()
        elif isinstance(stream, anyio.abc.SocketStream):
            try:
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except (OSError, ValueError, AttributeError):  # gone already (see peer_address)
                pass
        try:
            await stream.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
