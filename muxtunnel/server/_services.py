"""A session's public sockets: binding them, and serving the visitors that arrive on them.

A TCP visitor is counted, checked against its service's limits, given a mux stream (whose first
bytes are its `VisitorHeader`, then a PROXY protocol header if the service asked for one) and
forwarded (`muxtunnel.forward`). A UDP service's datagrams are handled by its `UdpForwarder`,
one stream per visitor address. HTTP and HTTPS services have no socket of their own: they are
routes on the server's shared web ports (`_web.WebFront`). Rate limits (`rate_limit`,
`per_source`) admit each new visitor first: a refused TCP visitor gets a reset, a refused UDP
flow is not created. A member of a load-balancing group is registered by its group
(`_groups`): its group holds the public socket, it only waits here until it leaves.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.auth import address_key
from muxtunnel.balance.ratelimit import Admission, Refusal
from muxtunnel.compress import ALGORITHMS
from muxtunnel.control import Register, VisitorHeader
from muxtunnel.forward import Visitors, forward, guarded
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, WEB_TYPES, ServiceType
from muxtunnel.server._balanced import AdmittedUdp
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

__all__ = [
    "PublicSocket", "admit", "bind", "check_port", "compression", "open_service",
    "proxy_header", "serve",
]  # fmt: skip

log = structlog.get_logger("muxtunnel.server")

#: Random ports tried when a client lets the server pick (a few hundred tries finds a free port
#: unless the allowed ranges are nearly full; then the client is told no port is free).
PICK_ATTEMPTS = 200

_Bound = anyio.abc.Listener[anyio.abc.SocketStream] | UdpForwarder
#: None: a web service (its visitors arrive through the shared web ports).
PublicSocket = _Bound | None


def compression(host: Host, request: Register, name: str) -> tuple[str | None, int]:
    """The compression to use for a service: what the client asked, if the policy of `name`
    (the service's, or its group's) allows it."""
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


async def open_service(
    host: Host, session: Session, session_id: int, request: Register
) -> tuple[ActiveService, PublicSocket]:
    """Check a registration and bind its public socket; `RegistrationError` if refused.

    The caller adds the service to the registry and serves it. (A group's member is registered
    by its group: `Host.join_group`.)
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
        return _web_service(host, session, session_id, request), None
    check_port(host, request)
    name = request.service

    def forwarder() -> UdpForwarder:
        config = host.config
        return AdmittedUdp(
            name, idle_s=config.udp_flow_idle_s, max_flows=config.udp_max_flows,
            limiter=lambda: host.visitor_limiter(name), session=session, key_of=address_key,
        )  # fmt: skip

    sock = await bind(host, request.type, request.remote_port, forwarder)
    port = sock.port if isinstance(sock, UdpForwarder) else local_port(sock)
    service = ActiveService(name, request.type, port, session_id, Visitors(parent=host.visitors))
    service.compression, service.compression_level = compression(host, request, name)
    service.proxy_protocol = request.proxy_protocol if request.type == "tcp" else None
    if isinstance(sock, UdpForwarder):
        sock.counters = service.udp
    return service, sock


def check_port(host: Host, request: Register) -> None:
    """May `request` have the port it asks for (`RegistrationError` if not)?"""
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


def _web_service(host: Host, session: Session, session_id: int, request: Register) -> ActiveService:
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
    service.compression, service.compression_level = compression(host, request, request.service)
    web.register(request, service, session)
    return service


async def bind(
    host: Host, type: ServiceType, port: int, forwarder: Callable[[], UdpForwarder]
) -> _Bound:
    """A public socket of `type` on `port` (0: a free allowed one); `forwarder` makes the UDP
    one. `RegistrationError` if no port can be bound."""
    config = host.config
    public_host = config.public_host

    async def binder(port: int) -> _Bound:
        if type == "tcp":
            return await listen_tcp(public_host, port)
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
    limit = host.limiter_of(service.name).connections_allowed(host.config.max_visitors_per_service)
    if service.visitors >= limit or session.closed:
        await abort(visitor)
        return
    admission = admit(host, service.name, address[0])
    if isinstance(admission, Refusal):
        await abort(visitor)
        return
    try:
        await _forward_visitor(host, session, session_id, service, visitor, address)
    finally:
        if admission is not None:
            admission.release()


def admit(host: Host, name: str, peer_host: str) -> Admission | Refusal | None:
    """A new visitor's admission by the rate limits of `name` (None: it has none); a refusal
    is counted and logged by the limiter."""
    limiter = host.visitor_limiter(name)
    if limiter is None:
        return None
    return limiter.admit(address_key(peer_host), anyio.current_time())


async def _forward_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.SocketStream,
    address: Address,
) -> None:
    peer_host, peer_port = address
    limiter = host.limiter_of(service.name)
    preamble = b""
    if service.proxy_protocol is not None:
        preamble = proxy_header(service.proxy_protocol, address, visitor)
    with service.in_flight.track():
        header = VisitorHeader(service.name, "tcp", peer_host, peer_port)
        try:
            stream = await session.open_stream(control.encode_visitor_header(header))
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
            compression_level=service.compression_level if service.compression else None,
            limiter=limiter,
            preamble=preamble,
            session=session_id,
        )


def proxy_header(version: str, peer: Address, visitor: anyio.abc.SocketStream) -> bytes:
    """The PROXY protocol header telling the local service who the visitor is."""
    from muxtunnel.vhost import encode_proxy_header  # only for services that ask for it

    local = local_address(visitor) or ("0.0.0.0", 0)
    return encode_proxy_header("v1" if version == "v1" else "v2", peer, local)
