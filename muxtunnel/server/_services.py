"""A session's public sockets: binding them, and serving the visitors that arrive on them.

A TCP visitor is counted, checked against its service's limits, given a mux stream (whose first
bytes are its `VisitorHeader`, then a PROXY protocol header if the service asked for one) and
forwarded (`muxtunnel.forward`). A UDP service's datagrams are handled by its `UdpForwarder`,
one stream per visitor address. HTTP and HTTPS services have no socket of their own: they are
routes on the server's shared web ports (`_web.WebFront`).
"""

from __future__ import annotations

import random

import anyio
import anyio.abc
import structlog

from mux import Session, read_ready
from muxtunnel import control
from muxtunnel.compress import ALGORITHMS
from muxtunnel.control import Register, VisitorHeader
from muxtunnel.forward import Visitors, forward, guarded, relayable
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, WEB_TYPES, ServiceType
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.transport import (
    Address,
    TransportError,
    abort,
    listen_tcp,
    local_address,
    local_port,
    peer_address,
)
from muxtunnel.udp import UdpForwarder

__all__ = ["PublicSocket", "open_service", "serve"]

log = structlog.get_logger("muxtunnel.server")

#: Random ports tried when a client lets the server pick (a few hundred tries finds a free port
#: unless the allowed ranges are nearly full; then the client is told no port is free).
PICK_ATTEMPTS = 200
#: Most bytes a visitor sent with its connect that ride its stream's SYN (well within the
#: stream's initial 256 KiB window); anything beyond follows as usual.
EARLY_BYTES = 64 * 1024

_Bound = anyio.abc.Listener[anyio.abc.SocketStream] | UdpForwarder
#: None: a web service (its visitors arrive through the shared web ports).
PublicSocket = _Bound | None


def _compression(host: Host, request: Register) -> tuple[str | None, int]:
    """The compression to use for a service: what the client asked, if policy allows it."""
    config = host.config
    policy = next((p for p in config.services if p.name == request.service), None)
    if (
        request.compression not in ALGORITHMS
        or request.type == "udp"
        or (policy is not None and not policy.compression)
    ):
        return None, 0
    level = request.compression_level or DEFAULT_COMPRESSION_LEVEL
    return request.compression, min(level, config.compression_level_max)


async def open_service(
    host: Host, session: Session, session_id: int, request: Register
) -> tuple[ActiveService, PublicSocket]:
    """Check a registration and bind its public socket; `RegistrationError` if refused.

    The caller adds the service to the registry and serves it.
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
    if request.type in WEB_TYPES:
        return _web_service(host, session, session_id, request), None
    allowed = host.config.allow_ports
    if request.remote_port and request.remote_port not in allowed:
        raise RegistrationError(
            control.PORT_NOT_ALLOWED,
            f"port {request.remote_port} is not allowed (allowed: {allowed})",
        )
    if (request.type, request.remote_port) in host.registry.ports:
        raise RegistrationError(
            control.PORT_IN_USE, f"{request.type} port {request.remote_port} is already in use"
        )
    sock = await _bind(host, session, request.service, request.type, request.remote_port)
    port = sock.port if isinstance(sock, UdpForwarder) else local_port(sock)
    service = ActiveService(
        request.service, request.type, port, session_id, Visitors(parent=host.visitors)
    )
    service.compression, service.compression_level = _compression(host, request)
    service.proxy_protocol = request.proxy_protocol if request.type == "tcp" else None
    if isinstance(sock, UdpForwarder):
        sock.counters = service.udp
    return service, sock


def _web_service(
    host: Host, session: Session, session_id: int, request: Register
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
    )
    service.compression, service.compression_level = _compression(host, request)
    web.register(request, service, session)
    return service


async def _bind(
    host: Host, session: Session, name: str, type: ServiceType, port: int
) -> _Bound:
    config = host.config
    public_host = config.public_host

    async def binder(port: int) -> _Bound:
        if type == "tcp":
            return await listen_tcp(public_host, port)
        forwarder = UdpForwarder(
            session, name, idle_s=config.udp_flow_idle_s, max_flows=config.udp_max_flows
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
    for _ in range(PICK_ATTEMPTS):
        lo, hi = random.choices(ranges, weights)[0]
        candidate = random.randint(lo, hi)
        if (type, candidate) in host.registry.ports:
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
        async with anyio.create_task_group() as visitors:
            with service.listener_scope:
                async with sock:

                    async def on_visitor(visitor: anyio.abc.SocketStream) -> None:
                        await guarded(
                            _serve_visitor(host, session, session_id, service, visitor),
                            visitor,
                            session=session_id,
                            service=service.name,
                        )

                    await sock.serve(on_visitor, task_group=visitors)


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
    limiter = host.limiter_of(service.name)
    limit = host.config.max_visitors_per_service
    if limiter.max_connections is not None:
        limit = min(limit, limiter.max_connections)
    if service.visitors >= limit or session.closed:
        await abort(visitor)
        return
    peer_host, peer_port = address
    preamble = b""
    if service.proxy_protocol is not None:
        preamble = _proxy_header(service.proxy_protocol, address, visitor)
    compression_level = service.compression_level if service.compression else None
    with service.in_flight.track():
        header = VisitorHeader(service.name, "tcp", peer_host, peer_port)
        first = control.encode_visitor_header(header)
        early = b""
        if relayable(compression_level, limiter):
            # What the visitor sent with its connect rides the SYN: no frame of its own.
            early = read_ready(visitor, EARLY_BYTES)
            first += preamble + early
            preamble = b""
        try:
            stream = await session.open_stream(first)
        except anyio.BrokenResourceError:
            await abort(visitor)
            return
        await forward(
            visitor,
            stream,
            visitor_side=True,
            service=service.name,
            peer=f"{peer_host}:{peer_port}",
            traffic=host.traffic_of(service.name),
            compression_level=compression_level,
            limiter=limiter,
            preamble=preamble,
            sent_early=len(early),
            session=session_id,
        )


def _proxy_header(version: str, peer: Address, visitor: anyio.abc.SocketStream) -> bytes:
    """The PROXY protocol header telling the local service who the visitor is."""
    from muxtunnel.vhost import encode_proxy_header  # only for services that ask for it

    local = local_address(visitor) or ("0.0.0.0", 0)
    return encode_proxy_header("v1" if version == "v1" else "v2", peer, local)
