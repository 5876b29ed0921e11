"""`muxtunnel listen`: accept clients, authenticate their services, bind public ports.

One carrier per client, one mux session on it. The client opens the session's first stream as
the control channel; every later stream is opened by the server, one per visitor (TCP
connection or UDP flow). Streams a client opens after the control channel are reset: a client
can only ask, over the control channel, for what its tokens allow.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.auth import (
    FailureLimiter,
    TokenBook,
    address_key,
    new_nonce,
    server_tag,
    verify_client_tag,
)
from muxtunnel.compress import ALGORITHMS, CompressedStream
from muxtunnel.control import Error, Hello, Register, Registered, Unregister, VisitorHeader
from muxtunnel.limits import MeteredStream, ServiceLimiter, ServiceTraffic
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, ServerConfig, ServiceType
from muxtunnel.proxy import pipe
from muxtunnel.tls import ServerTlsContext, TlsError
from muxtunnel.transport import (
    TransportError,
    abort,
    listen_tcp,
    local_port,
    peer_address,
)
from muxtunnel.udp import UdpCounters, UdpForwarder

log = structlog.get_logger("muxtunnel.server")

#: Random ports tried when a client lets the server pick (a few hundred tries finds a free port
#: unless the allowed ranges are nearly full; then the client is told no port is free).
_PICK_ATTEMPTS = 200

_PublicSocket = anyio.abc.Listener[anyio.abc.SocketStream] | UdpForwarder


@dataclass(eq=False)
class ActiveService:
    """A registered service: its public socket and live counters."""

    name: str
    type: ServiceType
    port: int
    session_id: int
    #: Cancelled: the service and all its visitors stop.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Cancelled: the public socket closes, open visitor connections carry on.
    listener_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    visitors: int = 0
    visitors_total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    udp: UdpCounters = field(default_factory=UdpCounters)
    started: float = field(default_factory=anyio.current_time)
    #: Agreed at registration: visitor streams are compressed with this (None: not at all).
    compression: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    #: Set once the public socket is closed and the service's tasks are over.
    ended: anyio.Event = field(default_factory=anyio.Event)


class Registry:
    """Live services of all sessions, by name and by (type, port)."""

    def __init__(self) -> None:
        self.by_name: dict[str, ActiveService] = {}
        self.ports: set[tuple[str, int]] = set()

    def add(self, service: ActiveService) -> None:
        self.by_name[service.name] = service
        self.ports.add((service.type, service.port))

    def remove(self, service: ActiveService) -> None:
        if self.by_name.get(service.name) is service:
            del self.by_name[service.name]
            self.ports.discard((service.type, service.port))
        service.scope.cancel()


class RegistrationError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PreAuthTicket:
    """A connection's place among those not yet authenticated; `scope` is cancelled to evict it."""

    __slots__ = ("scope", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.scope = anyio.CancelScope()


class PreAuthGate:
    """Bounds the connections that have not authenticated yet (the slowloris defence).

    At most `per_source` per address (per /64 for IPv6): a connection beyond that is refused at
    once. At most `total` in all: when full, the oldest one is evicted to make room, so a flood
    from many addresses costs honest clients nothing (they authenticate within a round trip or
    two, long before they become the oldest) and cannot lock them out for a whole
    `auth_timeout_s`. Refusals and evictions are counted, and logged at counts 1, 2, 4, 8, ...:
    never a line per connection.
    """

    def __init__(self) -> None:
        self._waiting: dict[PreAuthTicket, None] = {}  # oldest first
        self._by_source: dict[str, int] = {}
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, source: str, total: int, per_source: int) -> PreAuthTicket | None:
        if self._by_source.get(source, 0) >= per_source:
            self.refused += 1
            _log_doubling("pre-auth connection refused: too many from its address",
                          self.refused, source=source, limit=per_source)  # fmt: skip
            return None
        while len(self._waiting) >= total:
            oldest = next(iter(self._waiting))
            self.release(oldest)
            oldest.scope.cancel()
            self.evicted += 1
            _log_doubling("pre-auth connection evicted: too many waiting to authenticate",
                          self.evicted, limit=total)  # fmt: skip
        ticket = PreAuthTicket(source)
        self._waiting[ticket] = None
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return ticket

    def release(self, ticket: PreAuthTicket) -> None:
        """The connection authenticated or ended: it no longer counts."""
        if self._waiting.pop(ticket, 0) is None:
            left = self._by_source[ticket.source] - 1
            if left:
                self._by_source[ticket.source] = left
            else:
                del self._by_source[ticket.source]


def _log_doubling(event: str, count: int, **context: object) -> None:
    if count & (count - 1) == 0:  # 1, 2, 4, 8, ...
        log.warning(event, count=count, **context)


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tokens = TokenBook.from_config(config)
        self.failures = FailureLimiter(config.auth_failures_burst, config.auth_failures_per_min)
        #: Connections that have not authenticated yet (bounded per address and in all).
        self.preauth = PreAuthGate()
        self.registry = Registry()
        self.sessions: dict[int, ClientSession] = {}
        self._session_ids = itertools.count(1)
        self._accepting = anyio.CancelScope()
        self.port: int | None = None
        #: TLS on the control port (None: plain TCP); swapped by a reload.
        self.tls = ServerTlsContext.load(config.tls) if config.tls else None
        #: Per service name, kept across registrations: byte totals and enforced limits.
        self.traffic: dict[str, ServiceTraffic] = {}
        self.limiters = {policy.name: ServiceLimiter(policy) for policy in config.services}
        self.auth_failures = 0
        self.tls_failures = 0
        self.started = 0.0
        #: Bound ports of the metrics endpoint and admin API ("metrics", "admin"), once running.
        self.endpoint_ports: dict[str, int] = {}

    def traffic_of(self, name: str) -> ServiceTraffic:
        return self.traffic.setdefault(name, ServiceTraffic())

    def limiter_of(self, name: str) -> ServiceLimiter:
        return self.limiters.setdefault(name, ServiceLimiter())

    async def reload(self, config: ServerConfig) -> None:
        """Put a new config in force (see `muxtunnel.reload`)."""
        from muxtunnel.reload import reload_server

        await reload_server(self, config)

    async def close_service(self, service: ActiveService, reason: str) -> None:
        """Close a live service (its visitors too) and tell its client why."""
        log.warning("service closed by the server", service=service.name, reason=reason)
        self.registry.remove(service)
        client = self.sessions.get(service.session_id)
        if client is not None and client.channel is not None:
            message = Error(control.SERVICE_CLOSED, reason, service.name)
            try:
                await control.send_message(client.channel, message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled. Reports the bound control port through `task_status`."""
        self.started = anyio.current_time()
        listener = await listen_tcp(self.config.bind_host, self.config.bind_port)
        self.port = local_port(listener)
        log.info(
            "listening",
            bind=f"{self.config.bind_host}:{self.port}",
            allow_ports=str(self.config.allow_ports),
            tls=self.tls.fingerprint if self.tls else None,
        )
        async with anyio.create_task_group() as endpoints:
            if self.config.metrics or self.config.admin:
                from muxtunnel.admin import run_endpoints

                self.endpoint_ports = await endpoints.start(
                    run_endpoints, self.config.metrics, self.config.admin, self
                )
            task_status.started(self.port)
            # Carriers run in a group outside the accepting scope: stopping to accept new
            # clients (shutdown) must not cancel the sessions that are draining.
            async with anyio.create_task_group() as carriers:
                async with listener:
                    with self._accepting:
                        await listener.serve(self._on_carrier, task_group=carriers)
            endpoints.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Graceful stop: no new clients or visitors, GoAway, wait for transfers, then close.

        Visitor connections still open after `drain_timeout_s` are reset with their sessions.
        """
        self._accepting.cancel()
        sessions = list(self.sessions.values())
        for client in sessions:
            client.stop_accepting()
            if not client.session.closed:
                await client.session.go_away()
        with anyio.move_on_after(self.config.drain_timeout_s):
            while any(client.visitors() for client in sessions):
                await anyio.sleep(0.05)
        for client in sessions:
            await client.session.aclose()

    async def _on_carrier(self, stream: anyio.abc.SocketStream) -> None:
        address = peer_address(stream)
        if address is None:  # reset before we got to it
            await abort(stream)
            return
        ticket = self.preauth.admit(
            address_key(address[0]),
            self.config.max_preauth_connections,
            self.config.max_preauth_per_source,
        )
        if ticket is None:
            await abort(stream)
            return
        try:
            with ticket.scope:
                await self._serve_carrier(stream, address, ticket)
        finally:
            self.preauth.release(ticket)

    async def _serve_carrier(
        self, stream: anyio.abc.SocketStream, address: tuple[str, int], ticket: PreAuthTicket
    ) -> None:
        session_id = next(self._session_ids)
        host, port = address
        started = anyio.current_time()
        carrier: anyio.abc.ByteStream = stream
        binding = b""
        if self.tls is not None:
            tls = self.tls  # this handshake's certificate, even if a reload swaps it meanwhile
            try:
                with anyio.fail_after(self.config.auth_timeout_s):
                    carrier = await tls.accept(stream)
            except (TlsError, TimeoutError) as exc:
                self.tls_failures += 1  # logged at counts 1, 2, 4, ...: a flood is not a log
                _log_doubling(
                    "tls handshake failed", self.tls_failures, peer=f"{host}:{port}", error=str(exc)
                )
                await abort(stream)
                return
            binding = tls.binding
        client = ClientSession(self, session_id, host, port, binding)
        self.sessions[session_id] = client
        client.preauth = ticket
        try:
            async with Session(carrier, client=False, config=self.config.mux) as session:
                client.session = session
                await client.run()
        finally:
            del self.sessions[session_id]
            client.stop_services()
            if client.authenticated:
                log.info(
                    "session closed",
                    session=session_id,
                    peer=f"{host}:{port}",
                    duration_s=round(anyio.current_time() - started, 3),
                    reason=client.close_reason,
                )


class ClientSession:
    """One connected client: its control channel and the services it registered."""

    session: Session

    def __init__(
        self, server: Server, session_id: int, host: str, port: int, binding: bytes = b""
    ) -> None:
        self.server = server
        #: SHA-256 of the TLS certificate this session was accepted with (b"" without TLS).
        self.binding = binding
        self.started = anyio.current_time()
        self.channel: MuxStream | None = None
        self.id = session_id
        self.peer = f"{host}:{port}"
        self.source = address_key(host)
        self.services: dict[str, ActiveService] = {}
        self.authenticated = False
        self.close_reason = "client disconnected"
        #: Its place among unauthenticated connections, released once it authenticates.
        self.preauth: PreAuthTicket | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def config(self) -> ServerConfig:
        return self.server.config  # the server's current one: a reload reaches live sessions

    @property
    def has_session(self) -> bool:
        return hasattr(self, "session")

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._serve_control()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except control.ControlError as exc:
                self.close_reason = f"bad control message: {exc}"
                log.warning("bad control message", session=self.id, peer=self.peer, error=str(exc))
            except TimeoutError:
                self.close_reason = "no authentication in time"
                log.warning(
                    "authentication timeout",
                    session=self.id,
                    peer=self.peer,
                    timeout_s=self.config.auth_timeout_s,
                )
            tg.cancel_scope.cancel()

    async def _serve_control(self) -> None:
        with anyio.fail_after(self.config.auth_timeout_s) as deadline:
            channel = self.channel = await self.session.accept_stream()
            self._tg_start(self._refuse_client_streams)
            hello = await control.receive_message(channel)
            if not isinstance(hello, Hello):
                raise control.ControlError(f"expected hello, got {type(hello).__name__}")
            if hello.version != control.PROTOCOL_VERSION:
                await control.send_message(
                    channel,
                    Error(
                        control.VERSION_MISMATCH,
                        f"server speaks protocol {control.PROTOCOL_VERSION}, "
                        f"client {hello.version}",
                    ),
                )
                return
            server_nonce = new_nonce()
            await control.send_message(
                channel, control.Challenge(control.PROTOCOL_VERSION, server_nonce)
            )
            while True:
                message = await control.receive_message(channel)
                if isinstance(message, Register):
                    if not await self._register(channel, message, server_nonce, hello.client_nonce):
                        return
                    if self.authenticated:
                        deadline.deadline = float("inf")
                elif isinstance(message, Unregister):
                    await self._unregister(message.service)
                else:
                    raise control.ControlError(f"unexpected {type(message).__name__} message")
                if self.authenticated:
                    break
        while True:  # authenticated: no deadline any more
            message = await control.receive_message(channel)
            if isinstance(message, Register):
                if not await self._register(channel, message, server_nonce, hello.client_nonce):
                    return
            elif isinstance(message, Unregister):
                await self._unregister(message.service)
            else:
                raise control.ControlError(f"unexpected {type(message).__name__} message")

    def _tg_start(self, func: object) -> None:
        assert self._tg is not None
        self._tg.start_soon(func)  # type: ignore[arg-type]

    async def _refuse_client_streams(self) -> None:
        """Reset every stream the client opens after the control channel.

        One log line for the first and one with the count when the session ends: a line per
        stream would let any peer, authenticated or not, write our log at 12 bytes a line.
        """
        refused = 0
        try:
            while True:
                stream = await self.session.accept_stream()
                stream.reset()
                refused += 1
                if refused == 1:
                    log.warning("client opened a stream; refused", session=self.id, peer=self.peer)
        except anyio.BrokenResourceError:
            pass
        finally:
            if refused > 1:
                log.warning(
                    "client streams refused", session=self.id, peer=self.peer, count=refused
                )

    async def _register(
        self, channel: MuxStream, request: Register, server_nonce: bytes, client_nonce: bytes
    ) -> bool:
        """Handle one registration; False when the session must end.

        A failed authentication ends a session that has not authenticated yet; one that has
        (a client adding a service after a reload) stays up for its other services, but the
        failure still counts against the source's rate limit.
        """
        now = anyio.current_time()
        if not self.server.failures.allowed(self.source, now):
            retry = self.server.failures.retry_after(self.source, now)
            log.warning(
                "auth rate limited", session=self.id, peer=self.peer, retry_after_s=round(retry, 1)
            )
            await control.send_message(
                channel,
                Error(
                    control.RATE_LIMITED,
                    f"too many failed attempts; retry in {retry:.0f} s",
                    request.service,
                ),
            )
            self.close_reason = "rate limited"
            return False
        key, known = self.server.tokens.key_for(request.service)
        nonces = (server_nonce, client_nonce)
        valid = verify_client_tag(
            key, request.tag, request.service, request.type, *nonces, self.binding
        )
        if not (valid and known):
            self.server.failures.record_failure(self.source, now)
            self.server.auth_failures += 1
            log.warning(
                "authentication failed", session=self.id, peer=self.peer, service=request.service
            )
            await control.send_message(
                channel,
                Error(
                    control.AUTH_FAILED,
                    "authentication failed: wrong token or unknown service",
                    request.service,
                ),
            )
            if self.authenticated:
                return True
            self.close_reason = "authentication failed"
            return False
        if not self.authenticated:
            self.authenticated = True
            if self.preauth is not None:
                self.server.preauth.release(self.preauth)
            log.info("session opened", session=self.id, peer=self.peer)
        try:
            service = await self._activate(request)
        except RegistrationError as exc:
            log.warning(
                "registration refused",
                session=self.id,
                service=request.service,
                code=exc.code,
                reason=exc.message,
            )
            await control.send_message(channel, Error(exc.code, exc.message, request.service))
            return True
        tag = server_tag(
            key, request.service, request.type, server_nonce, client_nonce, self.binding
        )
        public_host, compression = self.config.public_host, service.compression
        await control.send_message(
            channel,
            Registered(request.service, request.type, public_host, service.port, tag, compression),
        )
        return True

    def _compression(self, request: Register) -> tuple[str | None, int]:
        """The compression to use for a service: what the client asked, if policy allows it."""
        policy = next((p for p in self.config.services if p.name == request.service), None)
        if (
            request.compression not in ALGORITHMS
            or request.type != "tcp"
            or (policy is not None and not policy.compression)
        ):
            return None, 0
        level = request.compression_level or DEFAULT_COMPRESSION_LEVEL
        level = min(level, self.config.compression_level_max)
        return request.compression, level

    async def _activate(self, request: Register) -> ActiveService:
        registry = self.server.registry
        existing = registry.by_name.get(request.service)
        if existing is not None:
            if existing.session_id == self.id:
                raise RegistrationError(
                    control.BAD_REQUEST, f"service {request.service!r} is already registered"
                )
            raise RegistrationError(
                control.SERVICE_TAKEN,
                f"service {request.service!r} is already served by another client",
            )
        allowed = self.config.allow_ports
        if request.remote_port and request.remote_port not in allowed:
            raise RegistrationError(
                control.PORT_NOT_ALLOWED,
                f"port {request.remote_port} is not allowed (allowed: {allowed})",
            )
        if (request.type, request.remote_port) in registry.ports:
            raise RegistrationError(
                control.PORT_IN_USE, f"{request.type} port {request.remote_port} is already in use"
            )
        sock = await self._bind(request.service, request.type, request.remote_port)
        port = sock.port if isinstance(sock, UdpForwarder) else local_port(sock)
        service = ActiveService(request.service, request.type, port, self.id)
        service.compression, service.compression_level = self._compression(request)
        if isinstance(sock, UdpForwarder):
            sock.counters = service.udp
        registry.add(service)
        self.services[service.name] = service
        assert self._tg is not None
        self._tg.start_soon(self._serve_service, service, sock)
        log.info(
            "service opened",
            session=self.id,
            service=service.name,
            type=service.type,
            public=f"{self.config.public_host}:{service.port}",
        )
        return service

    async def _bind(self, name: str, type: ServiceType, port: int) -> _PublicSocket:
        host = self.config.public_host

        async def binder(host: str, port: int) -> _PublicSocket:
            if type == "tcp":
                return await listen_tcp(host, port)
            forwarder = UdpForwarder(
                self.session,
                name,
                idle_s=self.config.udp_flow_idle_s,
                max_flows=self.config.udp_max_flows,
            )
            await forwarder.bind(host, port)
            return forwarder

        if port:
            try:
                return await binder(host, port)
            except TransportError as exc:
                raise RegistrationError(control.PORT_IN_USE, str(exc)) from None
        ranges = self.config.allow_ports.ranges
        weights = [hi - lo + 1 for lo, hi in ranges]
        for _ in range(_PICK_ATTEMPTS):
            lo, hi = random.choices(ranges, weights)[0]
            candidate = random.randint(lo, hi)
            if (type, candidate) in self.server.registry.ports:
                continue
            try:
                return await binder(host, candidate)
            except TransportError:
                continue
        raise RegistrationError(control.PORT_IN_USE, "no free port in the allowed ranges")

    async def _serve_service(
        self,
        service: ActiveService,
        sock: _PublicSocket,
    ) -> None:
        try:
            with service.scope:
                if isinstance(sock, UdpForwarder):
                    with service.listener_scope:  # datagrams have nothing to drain
                        await sock.run()
                else:
                    async with anyio.create_task_group() as visitors:
                        with service.listener_scope:
                            async with sock:
                                await sock.serve(
                                    lambda visitor: self._on_visitor(service, visitor),
                                    task_group=visitors,
                                )
        finally:
            self.server.registry.remove(service)
            self.services.pop(service.name, None)
            service.ended.set()
            log.info(
                "service closed",
                session=self.id,
                service=service.name,
                duration_s=round(anyio.current_time() - service.started, 3),
                visitors=service.visitors_total,
            )

    async def _on_visitor(self, service: ActiveService, visitor: anyio.abc.SocketStream) -> None:
        """One visitor. A bug here must cost this visitor only, never the server."""
        try:
            await self._serve_visitor(service, visitor)
        except Exception:
            log.exception("visitor handler failed", session=self.id, service=service.name)
            await abort(visitor)

    async def _serve_visitor(self, service: ActiveService, visitor: anyio.abc.SocketStream) -> None:
        address = peer_address(visitor)
        if address is None:  # reset before we got to it
            await abort(visitor)
            return
        host, port = address
        limiter = self.server.limiter_of(service.name)
        limit = self.config.max_visitors_per_service
        if limiter.max_connections is not None:
            limit = min(limit, limiter.max_connections)
        if service.visitors >= limit or self.session.closed:
            await abort(visitor)
            return
        service.visitors += 1
        service.visitors_total += 1
        started = anyio.current_time()
        traffic = self.server.traffic_of(service.name)
        meter = traffic.open(service.name, f"{host}:{port}")
        metered = MeteredStream(
            visitor,
            meter,
            receive_is_in=True,
            receive_bucket=limiter.inbound,
            send_bucket=limiter.outbound,
        )
        try:
            header = control.encode_visitor_header(VisitorHeader(service.name, "tcp", host, port))
            try:
                stream = await self.session.open_stream(header)
            except anyio.BrokenResourceError:
                await abort(visitor)
                return
            log.info("visitor opened", session=self.id, service=service.name, peer=f"{host}:{port}")
            tunnel: anyio.abc.ByteStream = stream
            if service.compression:
                tunnel = CompressedStream(stream, service.compression_level)
            result = await pipe(metered, tunnel)
            service.bytes_in += result.forward_bytes
            service.bytes_out += result.backward_bytes
            log.info(
                "visitor closed",
                session=self.id,
                service=service.name,
                peer=f"{host}:{port}",
                bytes_in=result.forward_bytes,
                bytes_out=result.backward_bytes,
                duration_s=round(anyio.current_time() - started, 3),
                error=result.error,
            )
        finally:
            service.visitors -= 1
            traffic.close(meter)

    async def _unregister(self, name: str) -> None:
        """Close a service; returns once its public port is free (the client may re-register)."""
        service = self.services.get(name)
        if service is not None:
            self.server.registry.remove(service)
            with anyio.move_on_after(5):
                await service.ended.wait()

    def visitors(self) -> int:
        """Visitor connections and UDP flows open on this session."""
        return sum(service.visitors for service in self.services.values())

    def stop_accepting(self) -> None:
        """Close the public sockets; visitor connections already open carry on."""
        for service in self.services.values():
            service.listener_scope.cancel()

    def stop_services(self) -> None:
        """Free every public port of this session at once (a reconnect may bind them again)."""
        for service in list(self.services.values()):
            self.server.registry.remove(service)
