"""`muxtunnel visit`: reach private services through the server, each on a local socket.

One session to the server, opened and kept as `up` keeps its own (`open_carrier`: TLS,
pinning; the mux keepalive; `backoff_s` between attempts), authenticated once per service with
its visitor token (`VisitControl`). Every local socket is bound before the first connection
attempt (a port in use ends `visit` at once), and its line `NAME tcp HOST:PORT -> NAME@SERVER`
is printed once the server first granted the visit.

A local TCP connection becomes a stream to the server whose SYN carries its `VisitorHeader`;
what it sent with its connect rides that SYN, the rest follows at once (no hop waits for an
ACK), relayed by `forward` as `listen` relays a visitor of a public port. A local UDP address
becomes a flow (`UdpForwarder`, as a public UDP port's). While there is no session, or the
server said the provider is offline, a new connection is reset at once (a new flow dropped),
counted and logged at doubling counts; connections open when the provider goes away are reset
by the server.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import structlog

from mux import MuxStream, Session, read_ready
from muxtunnel import __version__, control
from muxtunnel.client._carrier import open_carrier
from muxtunnel.client._state import CONTROL_TIMEOUT_S, FatalError, RetryableError, backoff_s
from muxtunnel.client._visit_control import VisitControl, VisitState
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.forward import Visitors, forward
from muxtunnel.limits import ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ClientConfig
from muxtunnel.reload import ReloadError
from muxtunnel.specs import format_host_port
from muxtunnel.status import ClientStatus, SessionRow
from muxtunnel.tls import SERVER_SPEAKS_TLS, client_context, speaks_tls
from muxtunnel.transport import (
    Address,
    TcpListener,
    abort,
    listen_tcp,
    local_port,
    peer_address,
    setup_done,
)
from muxtunnel.udp import OnEnd, UdpForwarder

__all__ = ["Visitor"]

log = structlog.get_logger("muxtunnel.visit")

#: Local connections of one service between their accept and their stream's opening (as a
#: public port's, `server._visitors.SETTING_UP`).
SETTING_UP = 16
#: At most this much of what a local connection sent first rides its stream's SYN (as a
#: public port's visitor's, `server._visitors.EARLY_BYTES`).
EARLY_BYTES = 64 * 1024


class _LocalFlows(UdpForwarder):
    """A private UDP service served locally: each local address is a flow to the server, on
    the session up now (`session`, None while there is none), when `may_open` says so."""

    def __init__(self, may_open: Callable[[Address], bool], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._may_open = may_open

    def _open_flow(
        self, address: Address, datagram: bytes
    ) -> tuple[MuxStream, OnEnd | None] | None:
        if self.session is None or not self._may_open(address):
            return None
        return super()._open_flow(address, datagram)


class Visitor:
    """`muxtunnel visit`: one session to the server, a local socket per private service."""

    def __init__(
        self, config: ClientConfig, announce: Callable[[VisitState, str], None] | None = None
    ) -> None:
        if not config.visits:
            raise ValueError("no private services to visit: give NAME or visitor.services")
        self.config = config
        self.visits = {spec.name: VisitState(spec) for spec in config.visits}
        self.announce = announce or (lambda state, server: None)
        self.tls_context: ssl.SSLContext | None = client_context(config.tls) if config.tls else None
        self.session: Session | None = None
        self.connected = anyio.Event()
        self.reconnects = 0
        self.traffic: dict[str, ServiceTraffic] = {}
        #: Local TCP connections in flight: a graceful stop waits for it to drain.
        self.visitors = Visitors()
        self.refusals = Refusals(log)
        self._listeners: dict[str, TcpListener] = {}
        self._flows: dict[str, UdpForwarder] = {}
        self._session_started = 0.0

    @property
    def server(self) -> str:
        """The server's control address."""
        return format_host_port(self.config.server_host, self.config.server_port)

    @property
    def online(self) -> bool:
        """A session is up and its visits were granted."""
        session = self.session
        return session is not None and not session.closed and self.connected.is_set()

    def traffic_of(self, name: str) -> ServiceTraffic:
        return self.traffic.setdefault(name, ServiceTraffic())

    # --- running ---

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind every local socket (`TransportError` if one cannot be), then serve them and
        keep a session to the server until cancelled; `FatalError` for what no retry fixes."""
        await self._bind()
        task_status.started()
        async with anyio.create_task_group() as tg:
            for name, listener in self._listeners.items():
                tg.start_soon(self._serve_tcp, self.visits[name], listener, tg)
            for forwarder in self._flows.values():
                tg.start_soon(forwarder.run)
            await self._keep_session()

    async def stop(self) -> None:
        """Graceful end: GoAway, let open connections finish (`drain_timeout_s`), close."""
        session = self.session
        if session is None or session.closed:
            return
        await session.go_away()
        with anyio.move_on_after(self.config.drain_timeout_s):
            await self.visitors.drained()
        await session.aclose()

    async def _bind(self) -> None:
        for state in self.visits.values():
            spec = state.spec
            if spec.type == "tcp":
                listener = await listen_tcp(
                    spec.bind_host, spec.bind_port, name=f"visit {spec.name}",
                    refusals=self.refusals,
                )  # fmt: skip
                self._listeners[spec.name] = listener
                state.bound = format_host_port(spec.bind_host, local_port(listener))
                continue
            forwarder = _LocalFlows(
                self._flow_gate(state), None, spec.name, idle_s=self.config.udp_flow_idle_s,
                max_flows=self.config.udp_max_flows, counters=state.udp, refusals=self.refusals,
            )  # fmt: skip
            await forwarder.bind(spec.bind_host, spec.bind_port)
            self._flows[spec.name] = forwarder
            state.bound = format_host_port(spec.bind_host, forwarder.port)

    async def _keep_session(self) -> None:
        attempt, first = 0, True
        while True:
            try:
                await self._session_once(first)
                attempt = 0
                reason = self.session.close_reason if self.session else "closed"
                log.warning("session ended", server=self.server, reason=reason)
            except RetryableError as exc:
                log.warning("connection failed", server=self.server, error=str(exc))
            finally:
                self.connected = anyio.Event()
                for state in self.visits.values():
                    state.granted = state.online = False
            first = False
            self.reconnects += 1
            delay = backoff_s(attempt, self.config.reconnect_min_s, self.config.reconnect_max_s)
            attempt += 1
            log.info("reconnecting", server=self.server, in_s=round(delay, 2), attempt=attempt)
            await anyio.sleep(delay)

    async def _session_once(self, first: bool) -> None:
        carrier = await open_carrier(self.config, self.tls_context)
        try:
            async with Session(carrier.stream, client=True, config=self.config.mux) as session:
                self.session = session
                session.refuse_streams()  # the server never opens a stream to a visitor
                stream = await session.open_stream()
                channel = VisitControl(stream, self.config, carrier.binding, lambda state: None)
                with anyio.fail_after(CONTROL_TIMEOUT_S):
                    await channel.hello()
                    for state in self.visits.values():
                        if state.revoked is None:
                            token = state.spec.token or self.config.token
                            await channel.visit(state, token, first=first)
                if carrier.remember is not None:
                    carrier.remember()  # the server proved the visitor key: its certificate is it
                log.info("session opened", server=self.server, services=len(self.visits))
                self._session_started = anyio.current_time()
                for forwarder in self._flows.values():
                    forwarder.session = session
                self.connected.set()
                for state in self.visits.values():
                    if not state.announced:
                        state.announced = True
                        self.announce(state, self.server)
                await channel.watch_visits(self._presence, self._revoked)
        except TimeoutError:
            raise RetryableError("the server did not answer in time") from None
        except control.ControlError as exc:
            raise RetryableError(f"bad message from the server: {exc}") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if self.connected.is_set():
                return  # a session that was up ended: the caller reconnects
            host, port = self.config.server_host, self.config.server_port
            if self.config.tls is None and await speaks_tls(host, port, CONTROL_TIMEOUT_S):
                raise FatalError(SERVER_SPEAKS_TLS) from None
            raise RetryableError(f"the server closed the connection: {exc or 'EOF'}") from None
        finally:
            for forwarder in self._flows.values():
                forwarder.session = None

    def _presence(self, name: str, online: bool) -> None:
        state = self.visits.get(name)
        if state is None:
            return
        state.online = online
        if online:
            log.info("the provider is online", service=name)
        else:
            log.warning("the provider is offline: connections are reset until it is back",
                        service=name)  # fmt: skip

    def _revoked(self, name: str | None, message: str) -> None:
        """The server revoked the visitor token of `name`: its connections were cut, it is
        never visited again; `FatalError` once every service is revoked (no retry helps)."""
        state = self.visits.get(name or "")
        if state is not None:
            state.revoked, state.granted, state.online = message, False, False
            log.error("visitor token revoked: connections are reset from now on",
                      service=name, reason=message)  # fmt: skip
        if all(state.revoked is not None for state in self.visits.values()):
            raise FatalError(message)

    # --- local connections ---

    def _flow_gate(self, state: VisitState) -> Callable[[Address], bool]:
        def new_flow(address: Address) -> bool:
            return self._may_open(state, format_host_port(*address))

        return new_flow

    def _may_open(self, state: VisitState, peer: str = "") -> bool:
        """May a new local connection (or flow) of `state`'s service go to the server now?
        If not, say why (counted, logged at doubling counts)."""
        if state.revoked is not None:
            self.refusals.refuse(
                "visit_revoked", "connection reset: the server revoked the visitor token",
                service=state.spec.name, peer=peer or None,
            )  # fmt: skip
            return False
        if not self.online:
            self.refusals.refuse(
                "server_offline", "connection reset: not connected to the server",
                service=state.spec.name, server=self.server, peer=peer or None,
            )  # fmt: skip
            return False
        if not state.online:
            self.refusals.refuse(
                "provider_offline", "connection reset: the provider of the service is offline",
                service=state.spec.name, peer=peer or None,
            )  # fmt: skip
            return False
        return True

    async def _serve_tcp(
        self, state: VisitState, listener: TcpListener, tg: anyio.abc.TaskGroup
    ) -> None:
        async def on_connection(conn: anyio.abc.SocketStream) -> None:
            await self._connection(state, conn)

        async with listener:
            await listener.serve(on_connection, task_group=tg, setting_up=SETTING_UP)

    async def _connection(self, state: VisitState, conn: anyio.abc.SocketStream) -> None:
        spec, address = state.spec, peer_address(conn)
        peer = format_host_port(*address) if address is not None else ""
        session = self.session
        if address is None or session is None or not self._may_open(state, peer):
            await abort(conn)
            return
        compressed = state.compression is not None
        header = VisitorHeader(spec.name, "tcp", *address, compressed=compressed)
        first = encode_visitor_header(header)
        # What the connection sent with its connect rides the SYN (relayed bytes only: a
        # compressed stream's bytes must pass its compressor).
        early = b"" if compressed else read_ready(conn, EARLY_BYTES)
        try:
            stream = await session.open_stream(first + early)
        except anyio.BrokenResourceError:
            self.refusals.refuse("server_offline", "connection reset: not connected to the server",
                                 service=spec.name, server=self.server, peer=peer)  # fmt: skip
            await abort(conn)
            return
        setup_done()
        with self.visitors.track():
            await forward(
                conn,
                stream,
                visitor_side=True,
                service=spec.name,
                peer=peer,
                traffic=self.traffic_of(spec.name),
                compression_level=state.compression_level if compressed else None,
                sent_early=len(early),
            )

    # --- changes and status ---

    async def apply_config(self, new: ClientConfig) -> None:
        """A reload: new tokens, TLS or server settings take a new session; the services and
        where they are served locally need a restart (`ReloadError`)."""
        old = {(s.name, s.type, s.bind_host, s.bind_port) for s in self.config.visits}
        if old != {(s.name, s.type, s.bind_host, s.bind_port) for s in new.visits}:
            raise ReloadError("visit's services and local addresses change with a restart only")
        self.tls_context = client_context(new.tls) if new.tls else None
        self.config = new
        for spec in new.visits:
            self.visits[spec.name].spec = spec
        log.info("config reloaded; reconnecting", server=self.server)
        if self.session is not None and not self.session.closed:
            await self.session.aclose()

    def status(self) -> ClientStatus:
        """What `visit` is doing now, as an immutable snapshot."""
        now = anyio.current_time()
        sessions: tuple[SessionRow, ...] = ()
        session = self.session
        if self.online and session is not None:
            sessions = (
                SessionRow(
                    id=0, peer=self.server, age_s=now - self._session_started,
                    rtt_s=session.rtt_s, streams=session.stream_count,
                    services=tuple(n for n, s in self.visits.items() if s.granted),
                    role="visitor",
                ),
            )  # fmt: skip
        services = tuple(
            state.row(self.traffic.get(name), self.server) for name, state in self.visits.items()
        )
        connections = [row for t in self.traffic.values() for row in t.connection_rows(now)]
        connections.sort(key=lambda row: -row.age_s)
        return ClientStatus(
            version=__version__,
            server=self.server,
            reconnects=self.reconnects,
            sessions=sessions,
            services=services,
            connections=tuple(connections),
            traffic=tuple(row.traffic() for row in services),
            refusals=dict(self.refusals.counts),
            command="visit",
        )
