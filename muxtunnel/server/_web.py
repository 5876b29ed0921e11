"""The shared web ports of `listen`: HTTP services routed by Host, HTTPS services by SNI.

One `WebFront` per server (when `server.http` is configured) owns the virtual-host engine
(`muxtunnel.vhost`), its two listeners, and the routes of every registered web service:

- registering an http/https service checks its names against the server's policy and adds its
  routes; a host name belongs to one client session at a time (its services may split the
  host's locations among themselves, nobody else may add one), and the URLs go back to it;
- a visitor's request reaches the service through `TunnelUpstream`: a mux stream to the client
  that holds it, counted, capped, metered, throttled and compressed as a TCP visitor's is;
- when a client's session ends, its routes stay `offline_grace_s` (answering 502, the names
  reserved, so a client that restarts gets them back); a new registration of the same service
  name takes them over at once. Unregistered or closed services lose their routes at once.

Invariants: routes change only here; `_live[name]` is a registered web service whose routes are
in the engine under `owner`; `_orphans[name]` the owner of routes in their grace. A name is in
at most one of the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.compress import CompressedStream
from muxtunnel.control import Register, VisitorHeader
from muxtunnel.fields import MAX_LIST_ITEMS
from muxtunnel.limits import MeteredStream, ServiceLimiter, ServiceTraffic
from muxtunnel.model import HttpFront, HttpsFront, ServerConfig, ServerTls
from muxtunnel.server import _registry
from muxtunnel.server._registry import ActiveService, RegistrationError, Registry
from muxtunnel.specs import SpecError, format_host_port, validate_subdomain
from muxtunnel.status import WebRow, WebTrafficRow
from muxtunnel.tls import ServerTlsContext
from muxtunnel.transport import listen_tcp, local_port
from muxtunnel.vhost import (
    BasicAuth,
    InvalidHostError,
    RouteConflict,
    RouteOptions,
    RouteTable,
    RouteTarget,
    UpstreamUnavailable,
    VhostConfig,
    VhostEngine,
    Visitor,
    normalise_domain,
)

__all__ = ["WebFront", "domain_allowed"]

log = structlog.get_logger("muxtunnel.server")

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def domain_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    """Does a policy pattern (`*`, `*.example.org`, an exact name) cover `name`?"""
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


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


class _ServiceStream(MeteredStream):
    """A visitor's stream to a web service: metered, throttled, compressed if agreed; counted
    among the service's visitors until it is closed."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        service: ActiveService,
        traffic: ServiceTraffic,
        limiter: ServiceLimiter,
        peer: str,
    ) -> None:
        if service.compression:
            stream = CompressedStream(stream, service.compression_level)
        self._traffic = traffic
        meter = traffic.open(service.name, peer)
        super().__init__(
            stream,
            meter,
            receive_is_in=False,
            receive_bucket=limiter.outbound,
            send_bucket=limiter.inbound,
        )
        self._tracked = contextlib.ExitStack()
        self._tracked.enter_context(service.in_flight.track())
        self._tracked.callback(service.streams.give_back)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self._traffic.close(self.meter)
            self._tracked.close()


class WebFront:
    """The virtual-host engine, its ports, and the routes of the registered web services."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        traffic_of: Callable[[str], ServiceTraffic],
        limiter_of: Callable[[str], ServiceLimiter],
    ) -> None:
        assert config.http is not None
        self.config = config
        self.front: HttpFront = config.http
        self.registry = registry
        self.traffic_of = traffic_of
        self.limiter_of = limiter_of
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
        if front.bind_host is not None:
            http_listener = await listen_tcp(front.bind_host, front.bind_port)
            self.http_port = local_port(http_listener)
        if https is not None:
            https_listener = await listen_tcp(https.bind_host, https.bind_port)
            self.https_port = local_port(https_listener)
        log.info("web ports listening", domain=front.domain, http=self._address("http"),
                 https=self._address("https"), terminates_tls=self.tls is not None)  # fmt: skip
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

    def _address(self, kind: str) -> str | None:
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
        if request.type == "https" and self.config.https is None:
            raise RegistrationError(
                control.UNSUPPORTED, "this server has no HTTPS port (listen --https-bind)"
            )
        if request.type == "http" and self.front.bind_host is None and self.tls is None:
            raise RegistrationError(
                control.UNSUPPORTED,
                "this server has no HTTP port (listen --http-bind) and terminates no TLS",
            )
        hosts = self._hosts(request)
        owner = f"session-{service.session_id}"
        # The name's own routes from its last session (in their grace) are taken over: the
        # registration proved the name's token.
        orphan = self._orphans.get(request.service)
        tables = (self.engine.http_routes, self.engine.tls_routes)
        for host in hosts:
            held = set().union(*(table.owners(host) for table in tables)) - {owner, orphan}
            if held:
                raise RegistrationError(
                    control.DOMAIN_TAKEN, f"{host} is already served by another client"
                )
        table = self.engine.tls_routes if request.type == "https" else self.engine.http_routes
        target = RouteTarget(request.service, owner, self._options(request))
        if orphan is not None:
            del self._orphans[request.service]
            self._drop_routes(orphan, request.service)
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
        self._live[request.service] = _Live(service, session, owner, table)
        service.urls = self._urls(request.type, hosts, locations)

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

    async def _expire(self, name: str, owner: str, grace_s: float) -> None:
        await anyio.sleep(grace_s)
        if self._orphans.get(name) == owner:
            del self._orphans[name]
            self._drop_routes(owner, name)
            log.info("web service offline: its names are free again", service=name)

    def _drop_routes(self, owner: str, name: str) -> None:
        self.engine.http_routes.remove(owner, name)
        self.engine.tls_routes.remove(owner, name)

    def _hosts(self, request: Register) -> list[str]:
        """The names a registration claims, checked against the server's policy."""
        domain = self.front.domain
        try:
            label = validate_subdomain(request.subdomain or request.service)
        except SpecError as exc:
            raise RegistrationError(control.BAD_REQUEST, str(exc)) from None
        hosts = [f"{label}.{domain}"]
        policy = next((p for p in self.config.services if p.name == request.service), None)
        allowed = self.front.custom_domains + (policy.custom_domains if policy else ())
        for text in request.custom_domains:
            try:
                name = normalise_domain(text)
            except InvalidHostError as exc:
                raise RegistrationError(control.BAD_REQUEST, str(exc)) from None
            bare = name.removeprefix("*.")
            if bare == domain or bare.endswith("." + domain):
                raise RegistrationError(
                    control.DOMAIN_NOT_ALLOWED,
                    f"{name} is under the server's domain {domain}: use subdomain instead",
                )
            if not domain_allowed(name, allowed):
                raise RegistrationError(
                    control.DOMAIN_NOT_ALLOWED,
                    f"the server does not let service {request.service!r} claim {name} "
                    "(server.http.custom_domains, or the service's custom_domains policy)",
                )
            hosts.append(name)
        return list(dict.fromkeys(hosts))

    def _options(self, request: Register) -> RouteOptions:
        auth = None
        try:
            if request.basic_auth is not None:
                auth = BasicAuth(*request.basic_auth)
            protocol = request.proxy_protocol
            return RouteOptions(
                host_rewrite=request.host_rewrite,
                set_headers=request.set_headers,
                remove_headers=request.remove_headers,
                basic_auth=auth,
                response_timeout_s=request.response_timeout_s,
                proxy_protocol="v1" if protocol == "v1" else "v2" if protocol == "v2" else None,
            )
        except ValueError as exc:
            raise RegistrationError(control.BAD_REQUEST, str(exc)) from None

    def _urls(self, type: str, hosts: list[str], locations: tuple[str, ...]) -> tuple[str, ...]:
        schemes = []
        if type == "http" and self.http_port is not None:
            schemes.append(("http", self.http_port, 80))
        if (type == "https" or self.tls is not None) and self.https_port is not None:
            schemes.append(("https", self.https_port, 443))
        urls = [
            f"{scheme}://{host}{'' if port == default else f':{port}'}"
            f"{'' if location == '/' or type == 'https' else location}"
            for scheme, port, default in schemes
            for host in hosts
            for location in (locations if type == "http" else ("/",))
        ]
        return tuple(dict.fromkeys(urls))[:MAX_LIST_ITEMS]

    # --- the upstream: how the engine reaches a service ---

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        """A stream to the client holding `target` (`vhost.Upstream`); 502s are raised here."""
        live = self._live.get(target.service)
        if live is None or live.owner != target.owner or live.session.closed:
            raise UpstreamUnavailable(f"the client serving {target.service!r} is offline")
        service, limiter = live.service, self.limiter_of(live.service.name)
        if refused := _registry.admit_web_visitor(service, self.config, limiter):
            raise UpstreamUnavailable(refused)  # else it took one of the service's streams
        header = VisitorHeader(service.name, service.type, visitor.host, visitor.port)
        try:
            stream = await live.session.open_stream(control.encode_visitor_header(header))
        except BaseException:
            service.streams.give_back()
            raise
        peer = format_host_port(visitor.host, visitor.port)
        return _ServiceStream(stream, service, self.traffic_of(service.name), limiter, peer)

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
            hosts = live.table.hosts_of(live.owner, live.service.name)
            policy = next((p for p in config.services if p.name == live.service.name), None)
            allowed = config.http.custom_domains + (policy.custom_domains if policy else ())
            domain = config.http.domain
            custom = [h for h in hosts if not h.endswith("." + domain)]
            if any(not domain_allowed(host, allowed) for host in custom):
                refused.append(live.service)
        return refused

    def row(self) -> WebRow:
        """The web ports as a status row."""
        counters = self.engine.counters
        return WebRow(
            domain=self.front.domain,
            http=self._address("http"),
            https=self._address("https"),
            terminates_tls=self.tls is not None,
            connections_total=counters.connections,
            refusals=dict(counters.refusals),
            internal_errors=counters.internal_errors,
        )

    def traffic_rows(self) -> list[WebTrafficRow]:
        """Per service name, everything the engine counted (names outlive registrations)."""
        rows = []
        for name, counters in sorted(self.engine.counters.services.items()):
            responses = dict(zip(_CLASSES, counters.responses, strict=True))
            rows.append(WebTrafficRow(name, responses, dict(counters.refusals), counters.tunnels))
        return rows
