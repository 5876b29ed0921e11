"""A session's public sockets: binding them, and serving the visitors that arrive on them.

A public port belongs to one service: the one holding it, the one it is reserved for after its
session ended (`_registry`), or the one the server's config pins it to (`services[].port`).

A session's services share its streams and its compression memory, each with a guaranteed
share (`SessionQuotas`, `muxtunnel.quota`). A TCP service's visitors are admitted and forwarded
by `_visitors`. A UDP service's datagrams are handled by its `UdpForwarder`, one stream per
visitor address, within the same stream share. HTTP and HTTPS services have no socket of their
own: they are routes on the server's shared web ports (`_web.WebFront`). Rate limits
(`rate_limit`, `per_source`) admit each new visitor first: a refused TCP visitor gets a reset,
a refused UDP flow is not created. A member of a load-balancing group is registered by its
group (`_groups`): its group holds the public socket, it only waits here until it leaves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.compress import ALGORITHMS
from muxtunnel.control import Register, Visit
from muxtunnel.forward import Visitors
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, WEB_TYPES, ServerConfig, ServiceType
from muxtunnel.quota import Quota
from muxtunnel.server import _visitors
from muxtunnel.server._admitted_udp import AdmittedUdp
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.sources import address_key
from muxtunnel.transport import TcpListener, TransportError, listen_tcp, local_port
from muxtunnel.udp import UdpForwarder

__all__ = [
    "PublicSocket", "SessionQuotas", "bind", "compression", "open_service", "port_for", "serve",
]  # fmt: skip

log = structlog.get_logger("muxtunnel.server")

#: Random ports tried when a client lets the server pick (a few hundred tries finds a free port
#: unless the allowed ranges are nearly full; then the client is told no port is free).
PICK_ATTEMPTS = 200

_Bound = TcpListener | UdpForwarder
#: None: a web service (its visitors arrive through the shared web ports).
PublicSocket = _Bound | None


@dataclass(frozen=True, slots=True)
class SessionQuotas:
    """What one session's services share: its streams, and its compression memory (bytes)."""

    streams: Quota
    compression: Quota

    @classmethod
    def for_config(cls, config: ServerConfig) -> SessionQuotas:
        # One stream is the control channel; the rest are visitors' and UDP flows'.
        return cls(Quota(config.mux.max_streams - 1), Quota(config.compression_budget_bytes))


def compression(host: Host, request: Register | Visit, name: str) -> tuple[str | None, int]:
    """The compression to use for a service (or a visitor's streams to it): what the client
    asked, if the policy of `name` (the service's, or its group's) allows it."""
    config = host.config
    policy = next((p for p in config.services if p.name == name), None)
    if (
        request.compression not in ALGORITHMS
        or request.type == "udp"
        or (policy is not None and not policy.compression)
    ):
        return None, 0
    level = request.compression_level or DEFAULT_COMPRESSION_LEVEL
    return request.compression, min(level, config.compression_level_max)


def pinned_ports(config: ServerConfig) -> dict[str, int]:
    """Service name -> the port the config pins it to."""
    return {p.name: p.port for p in config.services if p.port is not None}


def port_for(host: Host, request: Register, key: bytes, name: str | None = None) -> int:
    """The port a registration under public name `name` (default: its service's) may have
    (0: pick one); `RegistrationError` if it may not."""
    config, registry = host.config, host.registry
    name = request.service if name is None else name
    pins = pinned_ports(config)
    port = request.remote_port
    mine = pins.get(name)
    if mine is not None:
        if port not in (0, mine):
            raise RegistrationError(
                control.PORT_NOT_ALLOWED, f"service {name!r} is pinned to port {mine}"
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
    if reservation is not None and not reservation.belongs_to(name, key):
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
    visitor_keys: frozenset[bytes] = frozenset(),
) -> tuple[ActiveService, PublicSocket]:
    """Check a registration and bind its public socket; `RegistrationError` if refused.

    `key` is the one the client proved it holds (the port's owner is name and key). The caller
    adds the service to the registry and serves it. (A group's member is registered by its group:
    `Host.join_group`.) A private service binds nothing: its `visitor_keys` (opened from the
    registration) let visitors in through `_visit`.
    """
    if host.is_group(request.service):
        raise RegistrationError(
            control.SERVICE_TAKEN,
            f"service {request.service!r} is a load-balancing group: join it with group",
        )
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
    if request.type in WEB_TYPES:
        return _web_service(host, session, session_id, request, key, quotas), None
    if request.private:
        return _private_service(host, session, session_id, request, key, quotas, visitor_keys)
    port = port_for(host, request, key)
    name = request.service

    def forwarder() -> UdpForwarder:
        config = host.config
        return AdmittedUdp(
            name, idle_s=config.udp_flow_idle_s, max_flows=config.udp_max_flows,
            limiter=lambda: host.visitor_limiter(name), session=session, key_of=address_key,
            refusals=host.refusals,
        )  # fmt: skip

    sock = await bind(host, name, request.type, port, forwarder)
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
    service.compression, service.compression_level = compression(host, request, name)
    service.compression_fallback = request.compression_fallback
    service.proxy_protocol = request.proxy_protocol if request.type == "tcp" else None
    if isinstance(sock, UdpForwarder):
        sock.counters, sock.streams = service.udp, service.streams
    return service, sock


def _private_service(
    host: Host,
    session: Session,
    session_id: int,
    request: Register,
    key: bytes,
    quotas: SessionQuotas,
    visitor_keys: frozenset[bytes],
) -> tuple[ActiveService, PublicSocket]:
    name = request.service
    if not visitor_keys and not host.private.policy_keys.get(name):
        raise RegistrationError(
            control.BAD_REQUEST,
            f"private service {name!r} has no visitor token: give it visitor_token (or the "
            "server's services[].visitor_token)",
        )
    service = ActiveService(
        name,
        request.type,
        0,
        session_id,
        Visitors(parent=host.visitors),
        key=key,
        streams=quotas.streams.share(name),
        compression_memory=quotas.compression.share(name),
        private=True,
        visitor_keys=visitor_keys,
        provider=session,
    )
    service.compression, service.compression_level = compression(host, request, name)
    service.compression_fallback = request.compression_fallback
    service.proxy_protocol = request.proxy_protocol if request.type == "tcp" else None
    return service, None


def _web_service(
    host: Host,
    session: Session,
    session_id: int,
    request: Register,
    key: bytes,
    quotas: SessionQuotas,
) -> ActiveService:
    web = host.web
    if web is None:
        raise RegistrationError(
            control.UNSUPPORTED,
            "this server serves no http or https services (it needs listen --domain with "
            "--http-bind or --https-bind)",
        )
    service = ActiveService(
        request.service,
        request.type,
        web.public_port(request.type),
        session_id,
        Visitors(parent=host.visitors),
        key=key,
    )
    service.compression, service.compression_level = compression(host, request, request.service)
    web.register(request, service, session)
    service.streams = quotas.streams.share(request.service)
    service.compression_memory = quotas.compression.share(request.service)
    return service


async def bind(
    host: Host, name: str, type: ServiceType, port: int, forwarder: Callable[[], UdpForwarder]
) -> _Bound:
    """A public socket of `type` for `name` on `port` (0: a free allowed one); `forwarder`
    makes the UDP one. `RegistrationError` if no port can be bound."""
    config, registry = host.config, host.registry
    public_host = config.public_host

    async def binder(port: int) -> _Bound:
        if type == "tcp":
            return await listen_tcp(
                public_host, port, name=f"service {name}", refusals=host.refusals,
                reuse_port=config.reuse_port,
            )  # fmt: skip
        udp = forwarder()
        await udp.bind(public_host, port)
        return udp

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
        if service.private:
            await _serve_private(host, service)
            return
        if service.member is not None:  # its group serves its visitors
            try:
                await anyio.sleep_forever()
            finally:
                host.leave_group(service)
            return
        if sock is None:  # a web service: its routes live until it ends
            try:
                await anyio.sleep_forever()
            finally:
                if host.web is not None:
                    host.web.release(service)
            return
        if isinstance(sock, UdpForwarder):
            with service.listener_scope:  # datagrams have nothing to drain
                await sock.run()
            return
        await _visitors.serve_tcp(host, session, session_id, service, sock)


async def _serve_private(host: Host, service: ActiveService) -> None:
    """A private service has no socket: its visitors come spliced from visitor sessions
    (`_visit`). Until it ends, idle ones are cut; on a graceful stop the open ones may finish;
    when it ends (its scope cancelled), every one of them is cut."""
    try:
        async with anyio.create_task_group() as tg:
            sweeper = anyio.CancelScope()

            async def sweep() -> None:
                with sweeper:
                    await _visitors.close_idle_visitors(host, service.name)

            tg.start_soon(sweep)
            with service.listener_scope:
                await anyio.sleep_forever()
            await service.in_flight.drained()
            sweeper.cancel()
    finally:
        for scope in list(service.splices):
            scope.cancel()
