"""The shared web ports of `listen`: HTTP services routed by Host, HTTPS services by SNI.

One `WebFront` per server (when `server.http` is configured) owns the virtual-host engine
(`muxtunnel.vhost`), its two listeners, and the routes of every registered web service:

- registering an http/https service checks its names against the server's policy and adds its
  routes; a host name belongs to one client session at a time (its services may split the
  host's locations among themselves, nobody else may add one), and the URLs go back to it;
- a visitor's request reaches the service through `open` (the engine's `Upstream`): a mux
  stream to the client that holds it, counted, capped, metered, throttled and compressed as a
  TCP visitor's is (`_web_upstream`); a load-balancing group's routes are owned by the group
  (`GROUP_OWNER`) while it has members, and each request is admitted by the service's rate
  limits and goes to the member the group picks (routes of rate-limited services, and all of
  a group's, open an upstream per request: `RouteOptions.per_request`);
- when a client's session ends, its routes stay `offline_grace_s` (answering 502, the names
  reserved, so a client that restarts gets them back); a new registration of the same service
  name takes them over at once. Unregistered or closed services lose their routes at once.

Invariants: routes change only here; `_live[name]` is a registered web service whose routes are
in the engine under `owner`; `_orphans[name]` the owner of routes in their grace. A name is in
at most one of the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.balance.ratelimit import VisitorLimiter
from muxtunnel.control import Register, VisitorHeader
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import HttpFront, HttpsFront, ServerConfig, ServerTls
from muxtunnel.server import _registry
from muxtunnel.server._registry import ActiveService, GroupService, RegistrationError, Registry
from muxtunnel.server._web_names import (
    claimed_hosts,
    domain_allowed,
    hosts_allowed,
    route_options,
    service_urls,
)
from muxtunnel.server._web_upstream import ServiceStream, admit, open_member
from muxtunnel.specs import format_host_port
from muxtunnel.tls import ServerTlsContext
from muxtunnel.transport import listen_tcp, local_port
from muxtunnel.vhost import (
    RouteConflict,
    RouteTable,
    RouteTarget,
    UpstreamRefused,
    UpstreamUnavailable,
    VhostConfig,
    VhostEngine,
    Visitor,
)

__all__ = ["GROUP_OWNER", "NODE_OWNER", "WebFront", "domain_allowed"]

log = structlog.get_logger("muxtunnel.server")

#: Owner of a load-balancing group's routes: `group:NAME` (a client's are `session-ID`), and
#: of a service's another node of a cluster holds: `node:ID` (see `_mirror`).
GROUP_OWNER, NODE_OWNER = "group:", "node:"


def vhost_config(front: HttpFront) -> VhostConfig:
    """The engine's limits, from `server.http`."""
    return VhostConfig(
        max_header_bytes=front.max_header_bytes,
        max_header_count=front.max_header_count,
        head_timeout_s=front.head_timeout_s,
        idle_timeout_s=front.idle_timeout_s,
        response_timeout_s=front.response_timeout_s,
        max_connections_per_source=front.max_connections_per_source,
    )


@dataclass(eq=False)
class _Live:
    service: ActiveService
    session: Session
    owner: str
    table: RouteTable
    target: RouteTarget
    locations: tuple[str, ...]


class WebFront:
    """The virtual-host engine, its ports, and the routes of the registered web services."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        traffic_of: Callable[[str], ServiceTraffic],
        limiter_of: Callable[[str], ServiceLimiter],
        visitor_limiter: Callable[[str], VisitorLimiter | None] = lambda _: None,
        groups: Mapping[str, GroupService] | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        assert config.http is not None
        self.config = config
        self.front: HttpFront = config.http
        self.registry = registry
        self.traffic_of = traffic_of
        self.limiter_of = limiter_of
        #: Rate limits, groups by name (their routes are owned by `group:NAME`, live as they do).
        self.visitor_limiter = visitor_limiter
        self.groups: Mapping[str, GroupService] = groups if groups is not None else {}
        self.refusals = refusals
        #: Opens a stream to the node holding a route owned by `node:ID` (set by a cluster).
        self.remote: Callable[[RouteTarget, Visitor], Awaitable[anyio.abc.ByteStream]] | None = None
        #: A group's request to another node's member (None: one here); `WebRemote.spread`.
        self.spread: (
            Callable[[GroupService, Visitor, bool], Awaitable[anyio.abc.ByteStream | None]] | None
        ) = None
        self.tls = self.load_tls(config.https)
        self.engine = VhostEngine(
            self, vhost_config(self.front), tls_context=self.tls.context if self.tls else None
        )
        self.http_port: int | None = None
        self.https_port: int | None = None
        self._live: dict[str, _Live] = {}
        self._orphans: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._accepting = anyio.CancelScope()

    @staticmethod
    def load_tls(https: HttpsFront | None) -> ServerTlsContext | None:
        """The certificate that ends visitors' TLS here (None: SNI passthrough only); raises
        `TlsError` for a file that does not load."""
        if https is None or https.cert is None or https.key is None:
            return None
        loaded = ServerTlsContext.load(ServerTls(https.cert, https.key))
        loaded.context.set_alpn_protocols(["http/1.1"])  # the engine speaks HTTP/1.1, not h2
        return loaded

    # --- the ports ---

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Bind the web ports (`TransportError` if one cannot bind), serve until cancelled."""
        front, https = self.front, self.config.https
        http_listener = https_listener = None
        shared = self.config.reuse_port
        if front.bind_host is not None:
            http_listener = await listen_tcp(front.bind_host, front.bind_port, reuse_port=shared)
            self.http_port = local_port(http_listener)
        if https is not None:
            https_listener = await listen_tcp(https.bind_host, https.bind_port, reuse_port=shared)
            self.https_port = local_port(https_listener)
        log.info("web ports listening", domain=front.domain, http=self.address("http"),
                 https=self.address("https"), terminates_tls=self.tls is not None)  # fmt: skip
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            with self._accepting:
                async with anyio.create_task_group() as ports:
                    if http_listener is not None:
                        ports.start_soon(http_listener.serve, self.engine.serve_http, tg)
                    if https_listener is not None:
                        ports.start_soon(https_listener.serve, self.engine.serve_tls, tg)
            for listener in (http_listener, https_listener):
                if listener is not None:
                    await listener.aclose()

    def stop_accepting(self) -> None:
        """Close the web ports; visitor connections already open carry on."""
        self._accepting.cancel()

    def address(self, kind: str) -> str | None:
        """Where the `kind` ("http", "https") port listens (None: it does not)."""
        if kind == "http" and self.http_port is not None and self.front.bind_host is not None:
            return format_host_port(self.front.bind_host, self.http_port)
        https = self.config.https
        if kind == "https" and self.https_port is not None and https is not None:
            return format_host_port(https.bind_host, self.https_port)
        return None

    def public_port(self, type: str) -> int:
        """The port a service of `type` is reached on (what `Registered` says)."""
        if type == "http" and self.http_port is not None:
            return self.http_port
        return self.https_port or self.http_port or 80

    # --- registrations ---

    def register(self, request: Register, service: ActiveService, session: Session) -> None:
        """Route a web service (`RegistrationError` if refused); sets its `urls`."""
        name = request.service
        owner = f"session-{service.session_id}"
        # The name's own routes from its last session (in their grace) are taken over: the
        # registration proved the name's token.
        orphan = self._orphans.get(name)
        per_request = self.visitor_limiter(name) is not None
        table, target, hosts, locations = self._route(request, name, owner, orphan, per_request)
        self._live[name] = _Live(service, session, owner, table, target, locations)
        service.urls = self._urls(request.type, hosts, locations)

    def register_group(self, group: GroupService, request: Register) -> None:
        """Route a web group, with the options its first member asks (its later members' are
        not used); sets the group's `urls`. Each request then picks its member."""
        owner = f"{GROUP_OWNER}{group.name}"
        _, _, hosts, locations = self._route(request, group.name, owner, None, True)
        group.urls = self._urls(request.type, hosts, locations)

    def release_group(self, group: GroupService) -> None:
        """A web group closed: its routes go at once (no member is left to wait for)."""
        self._drop_routes(f"{GROUP_OWNER}{group.name}", group.name)

    def _route(
        self, request: Register, name: str, owner: str, orphan: str | None, per_request: bool
    ) -> tuple[RouteTable, RouteTarget, list[str], tuple[str, ...]]:
        if request.type == "https" and self.config.https is None:
            raise RegistrationError(
                control.UNSUPPORTED, "this server has no HTTPS port (listen --https-bind)"
            )
        if request.type == "http" and self.front.bind_host is None and self.tls is None:
            raise RegistrationError(
                control.UNSUPPORTED,
                "this server has no HTTP port (listen --http-bind) and terminates no TLS",
            )
        hosts = claimed_hosts(self.config, request, name)
        tables = (self.engine.http_routes, self.engine.tls_routes)
        for host in hosts:
            held = set().union(*(table.owners(host) for table in tables)) - {owner, orphan}
            if held:
                raise RegistrationError(
                    control.DOMAIN_TAKEN, f"{host} is already served by another client"
                )
        table = self.engine.tls_routes if request.type == "https" else self.engine.http_routes
        target = RouteTarget(name, owner, route_options(request, per_request))
        if orphan is not None:
            del self._orphans[name]
            self._drop_routes(orphan, name)
        locations = request.locations or ("/",)
        try:
            if request.type == "https":
                table.add(target, hosts)
            else:
                table.add(target, hosts, locations)
        except RouteConflict as exc:
            raise RegistrationError(control.DOMAIN_TAKEN, str(exc)) from None
        except ValueError as exc:
            raise RegistrationError(control.BAD_REQUEST, str(exc)) from None
        return table, target, hosts, locations

    def release(self, service: ActiveService) -> None:
        """A web service ended: its routes go, or wait out the grace if its session was lost."""
        live = self._live.get(service.name)
        if live is None or live.service is not service:
            return
        del self._live[service.name]
        grace_s = self.front.offline_grace_s
        if not service.session_lost or grace_s <= 0 or self._tg is None:
            self._drop_routes(live.owner, service.name)
            return
        self._orphans[service.name] = live.owner
        self._tg.start_soon(self._expire, service.name, live.owner, grace_s)

    def yield_hosts(self, hosts: set[str]) -> list[str]:
        """Another node of the cluster holds `hosts` now (its client registered there): the
        routes in their grace here that serve one of them go at once, so that the names are
        routed to that node instead of answering 502; the services whose routes went."""
        gone = []
        tables = (self.engine.http_routes, self.engine.tls_routes)
        for name, owner in list(self._orphans.items()):
            if any(hosts & set(table.hosts_of(owner, name)) for table in tables):
                del self._orphans[name]
                self._drop_routes(owner, name)
                gone.append(name)
        return gone

    async def _expire(self, name: str, owner: str, grace_s: float) -> None:
        await anyio.sleep(grace_s)
        if self._orphans.get(name) == owner:
            del self._orphans[name]
            self._drop_routes(owner, name)
            log.info("web service offline: its names are free again", service=name)

    def _drop_routes(self, owner: str, name: str) -> None:
        self.engine.http_routes.remove(owner, name)
        self.engine.tls_routes.remove(owner, name)

    def _urls(self, type: str, hosts: list[str], locations: tuple[str, ...]) -> tuple[str, ...]:
        ports = (self.http_port, self.https_port)
        return service_urls(type, hosts, locations, ports, self.tls is not None)

    # --- the upstream: how the engine reaches a service ---

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        """A stream to the client holding `target` (`vhost.Upstream`), or to the member its
        group picks; 502s and 429s are raised here."""
        name = target.service
        if target.owner.startswith(NODE_OWNER):  # held by another node of the cluster
            if self.remote is None:
                raise UpstreamUnavailable(f"the node serving {name!r} is unknown")
            return await self.remote(target, visitor)
        group = self.groups.get(name) if target.owner.startswith(GROUP_OWNER) else None
        limiter = self.limiter_of(name)
        if group is not None:
            usable = group.group.usable(anyio.current_time())
            stays = visitor.from_node and (visitor.handed_on or usable)  # or on, once at most
            if self.spread is not None and not stays:
                elsewhere = await self.spread(group, visitor, not usable)
                if elsewhere is not None:  # that node's limits and metering apply
                    return elsewhere
            limit = limiter.connections_allowed(self.config.max_visitors_per_service)
            if group.in_flight.count >= limit:
                raise UpstreamUnavailable(f"service {name!r} has {limit} connections open")
            admission = admit(self.visitor_limiter(name), name, visitor)
            return await open_member(
                group, visitor, traffic=self.traffic_of(name), limiter=limiter,
                admission=admission, refusals=self.refusals,
            )  # fmt: skip
        live = self._live.get(name)
        if live is None or live.owner != target.owner or live.session.closed:
            raise UpstreamUnavailable(f"the client serving {name!r} is offline")
        service = live.service
        if refused := _registry.admit_web_visitor(service, self.config, limiter):
            raise UpstreamUnavailable(refused)  # else it took one of the service's streams
        try:
            admission = admit(self.visitor_limiter(name), name, visitor)
        except UpstreamRefused:
            service.streams.give_back()
            raise
        header = VisitorHeader(name, service.type, visitor.host, visitor.port)
        try:
            stream = await live.session.open_stream(control.encode_visitor_header(header))
        except BaseException:
            service.streams.give_back()
            if admission is not None:
                admission.release()
            raise

        def closed() -> None:
            service.streams.give_back()
            if admission is not None:
                admission.release()

        return ServiceStream(
            stream, name, traffic=self.traffic_of(name), limiter=limiter,
            in_flight=service.in_flight, on_close=closed,
            compression_level=service.compression_level if service.compression else None,
            peer=format_host_port(visitor.host, visitor.port),
        )  # fmt: skip

    async def serve_forwarded(self, stream: anyio.abc.ByteStream, peer: tuple[str, int], *,
                              tls: bool = False, handed_on: bool = False) -> None:  # fmt: skip
        """Serve a visitor another node of a cluster handed over: HTTP (with this node's route
        options, basic auth included) or TLS routed by SNI."""
        visitor = Visitor(*peer, scheme="https" if tls else "http", relayed=not tls,
                          from_node=True, handed_on=handed_on)  # fmt: skip
        await (self.engine.serve_tls if tls else self.engine.serve_http)(stream, visitor)

    # --- changes and status ---

    def apply(self, config: ServerConfig, tls: ServerTlsContext | None) -> list[ActiveService]:
        """Put a reloaded config in force (binds and domain stay); the services whose custom
        domains it no longer allows, for the caller to close."""
        assert config.http is not None
        self.config, self.front, self.tls = config, config.http, tls
        engine = self.engine
        engine.config = vhost_config(config.http)
        engine.limiter.per_source = config.http.max_connections_per_source
        engine.tls_context = tls.context if tls is not None else None
        refused = []
        for live in self._live.values():
            name = live.service.name
            if not hosts_allowed(config, list(live.table.hosts_of(live.owner, name)), name):
                refused.append(live.service)
            elif (self.visitor_limiter(name) is not None) != live.target.options.per_request:
                self._route_per_request(live, not live.target.options.per_request)
        for name, group in self.groups.items():
            owner = f"{GROUP_OWNER}{name}"
            hosts = [*self.engine.http_routes.hosts_of(owner, name),
                     *self.engine.tls_routes.hosts_of(owner, name)]  # fmt: skip
            if hosts and not hosts_allowed(config, hosts, name):
                refused += [member.handle.service for member in group.group.members]
        return refused

    def _route_per_request(self, live: _Live, per_request: bool) -> None:
        """Rate limits came or went in a reload: each request opens its own upstream (and is
        admitted) while they are there."""
        target = live.target
        options = dataclasses.replace(target.options, per_request=per_request)
        live.target = dataclasses.replace(target, options=options)
        hosts = list(live.table.hosts_of(live.owner, target.service))
        if live.table is self.engine.tls_routes:
            live.table.add(live.target, hosts)
        else:
            live.table.add(live.target, hosts, live.locations)

