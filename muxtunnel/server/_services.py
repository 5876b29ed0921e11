"""A session's public sockets: binding them, and serving the visitors that arrive on them.

A public port belongs to one service: the one holding it, the one it is reserved for after its
session ended (`_registry`), or the one the server's config pins it to (`services[].port`).

A TCP visitor is checked against its service's limits before it costs anything beyond its
socket: visitors per service, per source address (per /64 for IPv6), and the service's share
of its session's streams (`quota`); each refusal is counted and logged at doubling counts.
Then it gets a mux stream (whose first bytes are its `VisitorHeader`), compressed if agreed
and the session's compression budget has room (uncompressed beyond it, if the client can take
that), and is forwarded (`muxtunnel.forward`). A visitor with no byte either way for the idle
timeout is closed. A UDP service's datagrams are handled by its `UdpForwarder`, one stream per
visitor address, within the same stream share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.auth import address_key
from muxtunnel.compress import ALGORITHMS, stream_memory_bytes
from muxtunnel.control import Register, VisitorHeader
from muxtunnel.forward import Visitors, forward, guarded
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, ServerConfig, ServiceType
from muxtunnel.quota import Quota
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.transport import (
    TcpListener,
    TransportError,
    abort,
    listen_tcp,
    local_port,
    peer_address,
    setup_done,
)
from muxtunnel.udp import UdpForwarder

__all__ = ["PublicSocket", "SessionQuotas", "open_service", "serve"]

log = structlog.get_logger("muxtunnel.server")

#: Random ports tried when a client lets the server pick (a few hundred tries finds a free port
#: unless the allowed ranges are nearly full; then the client is told no port is free).
PICK_ATTEMPTS = 200
#: Idle visitors are looked for every quarter of the timeout, but at least this often.
IDLE_CHECK_MAX_S = 5.0

#: Visitors of one service between their accept and their stream's opening: a flood of new
#: visitors waits in the kernel's accept queue rather than filling the event loop (with the
#: client's DIALS_PER_SERVICE, 1100 visitors of one service in 0.1 s left the neighbour
#: service's worst round trip under 70 ms; without either, 100-230 ms).
SETTING_UP = 16

PublicSocket = TcpListener | UdpForwarder


@dataclass(frozen=True, slots=True)
class SessionQuotas:
    """What one session's services share: its streams, and its compression memory (bytes)."""

    streams: Quota
    compression: Quota

    @classmethod
    def for_config(cls, config: ServerConfig) -> SessionQuotas:
        # One stream is the control channel; the rest are visitors' and UDP flows'.
        return cls(Quota(config.mux.max_streams - 1), Quota(config.compression_budget_bytes))


def _compression(host: Host, request: Register) -> tuple[str | None, int]:
    """The compression to use for a service: what the client asked, if policy allows it."""
    config = host.config
    policy = next((p for p in config.services if p.name == request.service), None)
    if (
        request.compression not in ALGORITHMS
        or request.type != "tcp"
        or (policy is not None and not policy.compression)
    ):
        return None, 0
    level = request.compression_level or DEFAULT_COMPRESSION_LEVEL
    return request.compression, min(level, config.compression_level_max)


def pinned_ports(config: ServerConfig) -> dict[str, int]:
    """Service name -> the port the config pins it to."""
    return {p.name: p.port for p in config.services if p.port is not None}


def _port_for(host: Host, request: Register, key: bytes) -> int:
    """The port a registration may have (0: pick one); `RegistrationError` if it may not."""
    config, registry = host.config, host.registry
    pins = pinned_ports(config)
    port = request.remote_port
    mine = pins.get(request.service)
    if mine is not None:
        if port not in (0, mine):
            raise RegistrationError(
                control.PORT_NOT_ALLOWED, f"service {request.service!r} is pinned to port {mine}"
            )
        port = mine
    elif port in pins.values():
        raise RegistrationError(control.PORT_IN_USE, f"port {port} is pinned to another service")
    elif port and port not in config.allow_ports:
        raise RegistrationError(
            control.PORT_NOT_ALLOWED,
            f"port {port} is not allowed (allowed: {config.allow_ports})",
        )
    if not port:
        return 0
    if (request.type, port) in registry.ports:
        raise RegistrationError(
            control.PORT_IN_USE, f"{request.type} port {port} is already in use"
        )
    reservation = registry.reservation(request.type, port)
    if reservation is not None and not reservation.belongs_to(request.service, key):
        left_s = reservation.until - anyio.current_time()
        raise RegistrationError(
            control.PORT_IN_USE,
            f"{request.type} port {port} is reserved for the service that held it "
            f"(for {left_s:.0f} more seconds)",
        )
    return port


async def open_service(
    host: Host,
    session: Session,
    session_id: int,
    request: Register,
    key: bytes,
    quotas: SessionQuotas,
) -> tuple[ActiveService, PublicSocket]:
    """Check a registration and bind its public socket; `RegistrationError` if refused.

    `key` is the one the client proved it holds (the port's owner is name and key). The caller
    adds the service to the registry and serves it.
    """
    existing = host.registry.by_name.get(request.service)
    if existing is not None:
        if existing.session_id == session_id:
            raise RegistrationError(
                control.BAD_REQUEST, f"service {request.service!r} is already registered"
            )
        raise RegistrationError(
            control.SERVICE_TAKEN,
            f"service {request.service!r} is already served by another client",
        )
    port = _port_for(host, request, key)
    sock = await _bind(host, session, request.service, request.type, port)
    port = sock.port if isinstance(sock, UdpForwarder) else local_port(sock)
    service = ActiveService(
        request.service,
        request.type,
        port,
        session_id,
        Visitors(parent=host.visitors),
        key=key,
        streams=quotas.streams.share(request.service),
        compression_memory=quotas.compression.share(request.service),
    )
    service.compression, service.compression_level = _compression(host, request)
    service.compression_fallback = request.compression_fallback
    if isinstance(sock, UdpForwarder):
        sock.counters, sock.streams = service.udp, service.streams
    return service, sock


async def _bind(
    host: Host, session: Session, name: str, type: ServiceType, port: int
) -> PublicSocket:
    config, registry = host.config, host.registry
    public_host = config.public_host

    async def binder(port: int) -> PublicSocket:
        if type == "tcp":
            return await listen_tcp(
                public_host, port, name=f"service {name}", refusals=host.refusals
            )
        forwarder = UdpForwarder(
            session,
            name,
            idle_s=config.udp_flow_idle_s,
            max_flows=config.udp_max_flows,
            refusals=host.refusals,
        )
        await forwarder.bind(public_host, port)
        return forwarder

    if port:
        try:
            return await binder(port)
        except TransportError as exc:
            raise RegistrationError(control.PORT_IN_USE, str(exc)) from None
    ranges = config.allow_ports.ranges
    weights = [hi - lo + 1 for lo, hi in ranges]
    pinned = set(pinned_ports(config).values())
    for _ in range(PICK_ATTEMPTS):
        lo, hi = random.choices(ranges, weights)[0]
        candidate = random.randint(lo, hi)
        if (
            (type, candidate) in registry.ports
            or candidate in pinned
            or registry.reservation(type, candidate) is not None
        ):
            continue
        try:
            return await binder(candidate)
        except TransportError:
            continue
    raise RegistrationError(control.PORT_IN_USE, "no free port in the allowed ranges")


async def serve(
    host: Host, session: Session, session_id: int, service: ActiveService, sock: PublicSocket
) -> None:
    """Serve a service's public socket until its scope is cancelled (or the socket fails)."""
    with service.scope:
        if isinstance(sock, UdpForwarder):
            with service.listener_scope:  # datagrams have nothing to drain
                await sock.run()
            return
        async with anyio.create_task_group() as visitors:
            sweeper = anyio.CancelScope()

            async def sweep() -> None:
                with sweeper:
                    await _close_idle_visitors(host, service)

            visitors.start_soon(sweep)
            with service.listener_scope:
                async with sock:

                    async def on_visitor(visitor: anyio.abc.SocketStream) -> None:
                        await guarded(
                            _serve_visitor(host, session, session_id, service, visitor),
                            visitor,
                            session=session_id,
                            service=service.name,
                        )

                    await sock.serve(on_visitor, task_group=visitors, setting_up=SETTING_UP)
            # No new visitors (a graceful stop): the open ones may finish, idle ones still cut.
            await service.in_flight.drained()
            sweeper.cancel()


def idle_timeout_s(host: Host, name: str) -> float:
    """The idle timeout of a service's visitors (0: none): its policy's, or the server's."""
    own = host.limiter_of(name).idle_timeout_s
    return host.config.visitor_idle_timeout_s if own is None else own


async def _close_idle_visitors(host: Host, service: ActiveService) -> None:
    """Close the service's visitors that moved no byte either way for the idle timeout."""
    traffic = host.traffic_of(service.name)
    while True:
        timeout_s = idle_timeout_s(host, service.name)
        await anyio.sleep(min(timeout_s / 4, IDLE_CHECK_MAX_S) if timeout_s else IDLE_CHECK_MAX_S)
        timeout_s = idle_timeout_s(host, service.name)  # a reload may have changed it
        if not timeout_s:
            continue
        now = anyio.current_time()
        for meter in list(traffic.live):
            if meter.scope is not None and not meter.idle_closed:
                if now - meter.last_active >= timeout_s:
                    meter.idle_closed = True
                    meter.scope.cancel()
                    host.refusals.refuse(
                        "visitor_idle",
                        "visitor closed: no bytes either way for the idle timeout",
                        service=service.name,
                        peer=meter.peer,
                        timeout_s=timeout_s,
                    )


def _refusal(host: Host, service: ActiveService, session: Session, source: str) -> str | None:
    """Why a new visitor of `service` from `source` must be refused (None: it may come in)."""
    config = host.config
    limiter = host.limiter_of(service.name)
    limit = config.max_visitors_per_service
    if limiter.max_connections is not None:
        limit = min(limit, limiter.max_connections)
    if service.visitors >= limit:
        return "visitors_per_service"
    if service.sources[source] >= config.max_visitors_per_source:
        return "visitors_per_source"
    if session.closed:
        return "session_closed"
    return None


_REFUSED = {
    "visitors_per_service": "visitor refused: its service has max_visitors_per_service",
    "visitors_per_source": "visitor refused: its address has max_visitors_per_source",
    "stream_quota": "visitor refused: its service has its share of the session's streams",
    "compression_budget": "visitor refused: the session's compression budget is spent",
}


async def _serve_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.SocketStream,
) -> None:
    address = peer_address(visitor)
    if address is None:  # reset before we got to it
        await abort(visitor)
        return
    source = address_key(address[0])
    reason = _refusal(host, service, session, source)
    if reason is None and not service.streams.take():
        reason = "stream_quota"
    if reason is not None:
        if reason in _REFUSED:
            host.refusals.refuse(reason, _REFUSED[reason], service=service.name, source=source)
        await abort(visitor)
        return
    service.sources[source] += 1
    memory = stream_memory_bytes(service.compression_level) if service.compression else 0
    compressed = bool(memory) and service.compression_memory.take(memory)
    try:
        if memory and not compressed:
            if not service.compression_fallback:  # its client knows no other way
                host.refusals.refuse(
                    "compression_budget",
                    _REFUSED["compression_budget"],
                    service=service.name,
                    source=source,
                )
                await abort(visitor)
                return
            host.refusals.refuse(
                "compression_fallback",
                "visitor stream uncompressed: the session's compression budget is spent",
                service=service.name,
            )
        await _forward_visitor(host, session, session_id, service, visitor, address, compressed)
    finally:
        service.streams.give_back()
        if compressed:
            service.compression_memory.give_back(memory)
        service.sources[source] -= 1
        if not service.sources[source]:
            del service.sources[source]


async def _forward_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.SocketStream,
    address: tuple[str, int],
    compressed: bool,
) -> None:
    peer_host, peer_port = address
    with service.in_flight.track():
        plain = bool(service.compression) and not compressed
        header = VisitorHeader(service.name, "tcp", peer_host, peer_port, compressed=not plain)
        try:
            stream = await session.open_stream(control.encode_visitor_header(header))
        except anyio.BrokenResourceError:
            await abort(visitor)
            return
        setup_done()
        await forward(
            visitor,
            stream,
            visitor_side=True,
            service=service.name,
            peer=f"{peer_host}:{peer_port}",
            traffic=host.traffic_of(service.name),
            compression_level=service.compression_level if compressed else None,
            limiter=host.limiter_of(service.name),
            session=session_id,
        )
