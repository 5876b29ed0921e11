"""Resolved runtime configuration: what the YAML file and the command line turn into.

Every value here is final: defaults filled in, `${VAR}` substituted, validated. Nothing is Optional
unless "absent" has a meaning of its own (a service without a token of its own uses the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from mux import MuxConfig
from muxtunnel.balance.settings import (
    DEFAULT_CIRCUIT,
    DEFAULT_POLICY,
    CircuitSettings,
    HealthSettings,
    PerSourceLimit,
    Policy,
    RateLimit,
)
from muxtunnel.cluster_config import ClusterConfig as ClusterConfig  # `server.cluster`
from muxtunnel.path_config import PathSpec, PathTuning

ServiceType = Literal["tcp", "udp", "http", "https"]
#: HTTP services are routed by Host on the server's shared HTTP port (and its TLS port when the
#: server terminates TLS); HTTPS services by the TLS ClientHello's SNI, left encrypted.
WEB_TYPES: tuple[ServiceType, ...] = ("http", "https")
ProxyProtocol = Literal["v1", "v2"]
DEFAULT_CONTROL_PORT = 7835
#: Highest weight of a group member: weights only compare members, and a thousand to one is
#: finer than any share a visitor count can show; the bound keeps the picker's sums small.
MAX_WEIGHT = 1000
#: zstd level when none is asked for: zstd's own default (ZSTD_CLEVEL_DEFAULT), fast and a good
#: ratio on text; `compression_level_max` caps what clients may ask the server for.
DEFAULT_COMPRESSION_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Secret:
    """A token. Its repr and str never show the value."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class PortRanges:
    """Inclusive port ranges, e.g. parsed from `1024-65535,8080`."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


ALL_UNPRIVILEGED_PORTS = PortRanges(((1024, 65535),))


@dataclass(frozen=True, slots=True)
class BasicAuthSpec:
    """HTTP basic auth a service demands of its visitors. The password never shows in a repr."""

    user: str
    password: Secret


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """What an HTTP or HTTPS service asks of the server's virtual hosts (see README)."""

    #: The public name is SUBDOMAIN.DOMAIN (None: the service's name).
    subdomain: str | None = None
    #: Further names, outside the server's domain, that the server's policy lets it claim.
    custom_domains: tuple[str, ...] = ()
    #: Path prefixes routed to this service (HTTP only; empty: all of them, "/").
    locations: tuple[str, ...] = ()
    #: Host header the local service receives instead of the visitor's.
    host_rewrite: str | None = None
    #: Request headers set (replacing the visitor's) and removed.
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    basic_auth: BasicAuthSpec | None = None
    #: Seconds the local service has to start answering (None: the server's default).
    response_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """What the server knows of one service name: its own token and limits."""

    name: str
    token: Secret | None = None  # None: the server's default token applies
    #: Visitor bytes per second, each direction, all visitors of the service together.
    bandwidth_bytes_per_s: int | None = None  # None: unlimited
    #: Concurrent visitor connections (the lower of this and max_visitors_per_service applies).
    max_connections: int | None = None
    #: May the client ask for compressed visitor streams?
    compression: bool = True
    #: HTTP/HTTPS: names outside the server's domain this service may claim (exact names,
    #: `*.example.org` for any name under example.org, `*` for any name at all).
    custom_domains: tuple[str, ...] = ()
    #: The public port this service always gets and nobody else may bind (None: not pinned).
    port: int | None = None
    #: Visitor idle timeout for this service (None: the server's; 0: never, for long-lived
    #: connections such as ssh sessions that may sit silent for hours).
    idle_timeout_s: float | None = None
    #: A load-balancing group of this name: the token its members must prove (None: the first
    #: member's sets it, see README), how it picks a member, when it ejects one.
    group_token: Secret | None = None
    lb: Policy = DEFAULT_POLICY
    circuit: CircuitSettings = DEFAULT_CIRCUIT
    #: New visitors of the service: all sources together, and per source address.
    rate_limit: RateLimit | None = None
    per_source: PerSourceLimit | None = None
    #: Private services: visitor tokens the server's operator lets in, besides the provider's.
    visitor_tokens: tuple[Secret, ...] = ()


#: Where the inspector listens by default, and how many ports after it are tried when it is
#: busy (ngrok's habit: its inspector is at 127.0.0.1:4040).
DEFAULT_INSPECT = ("127.0.0.1", 4040)
INSPECT_PORTS_TRIED = 10


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A local HTTP endpoint (metrics, admin API): where it binds and the bearer token, if any."""

    host: str
    port: int
    token: Secret | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS on the server's control port. Paths are absolute or relative to the working dir."""

    cert: str
    key: str
    #: Mutual TLS: clients must present a certificate this CA file (PEM) vouches for.
    client_ca: str | None = None
    #: The server's own pair in its state directory: made on the first start, then kept.
    self_signed: bool = False


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS towards the server and how the server's certificate is verified.

    At least one of `ca`, `fingerprints`, `insecure` or `known_hosts` is set (the loader makes
    sure): the client never falls back to an unverified connection on its own.
    """

    #: PEM file of trusted CAs, or "system" for the system's trust store.
    ca: str | None = None
    #: Pinned SHA-256 fingerprints of the server certificate (lowercase hex, no separators).
    fingerprints: tuple[str, ...] = ()
    #: Accept any certificate (channel binding still exposes a relaying man in the middle).
    insecure: bool = False
    #: Client certificate and key for mutual TLS.
    cert: str | None = None
    key: str | None = None
    #: Name checked against the certificate with `ca` (default: the server's host).
    server_name: str | None = None
    #: Trust on first use (with none of the above): the file that remembers each server's
    #: fingerprint, as ssh's known_hosts does (see `muxtunnel.trust`).
    known_hosts: str | None = None


@dataclass(frozen=True, slots=True)
class HttpFront:
    """`server.http`: the shared HTTP port and the domain every web service lives under.

    The limits below are the virtual-host engine's (`muxtunnel.vhost.VhostConfig`, which says
    where each default comes from); they hold for the HTTPS port too.
    """

    domain: str
    #: Where the shared HTTP port binds; None: no plain HTTP port (only `https`).
    bind_host: str | None = None
    bind_port: int = 80
    #: Names outside `domain` any service may claim (patterns as `ServicePolicy.custom_domains`).
    custom_domains: tuple[str, ...] = ()
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    response_timeout_s: float = 60.0
    max_connections_per_source: int = 256
    #: After a client's session ends, its names answer 502 (and stay reserved for it) this long,
    #: then 404: a client restarting does not hand its names to someone else.
    offline_grace_s: float = 30.0


@dataclass(frozen=True, slots=True)
class HttpsFront:
    """`server.https`: the shared TLS port; with `cert`/`key`, TLS for HTTP services ends here."""

    bind_host: str = "0.0.0.0"
    bind_port: int = 443
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    bind_host: str = "0.0.0.0"
    bind_port: int = DEFAULT_CONTROL_PORT
    #: Host the public service ports bind on (defaults to bind_host).
    public_host: str = "0.0.0.0"
    #: Default token for every service without a policy token of its own.
    token: Secret | None = None
    services: tuple[ServicePolicy, ...] = ()
    allow_ports: PortRanges = ALL_UNPRIVILEGED_PORTS
    mux: MuxConfig = field(default_factory=MuxConfig)
    auth_timeout_s: float = 5.0
    #: On SIGTERM: how long live visitor connections get to finish after the GoAway.
    drain_timeout_s: float = 10.0
    max_visitors_per_service: int = 1024
    #: Concurrent visitors of one service from one source address (per /64 for IPv6): a quarter
    #: of the service's, so one (a NAT'd office) may have many, but it takes four to fill one.
    max_visitors_per_source: int = 256
    #: A visitor connection with no byte either way for this long is closed (0: never). Browsers
    #: keep idle connections for 5 minutes at most (Chrome's socket pool: 300 s).
    visitor_idle_timeout_s: float = 300.0
    udp_flow_idle_s: float = 60.0
    #: UDP flows kept per service (each a stream: never past the session's `mux.max_streams`).
    udp_max_flows: int = 1024
    #: Authenticated sessions (clients) per source address (per /64 for IPv6).
    max_sessions_per_source: int = 16
    #: Services one session may register; each holds a public port, so this caps ports too (frp's
    #: `maxPortsPerClient`).
    max_services_per_session: int = 64
    #: After a session ends, each of its public ports stays reserved for its service (the same
    #: name, proven with the same token) this long: the client's reconnect finds it free, and
    #: nobody else can take it meanwhile. A minute covers a keepalive timeout and a few retries.
    port_reservation_s: float = 60.0
    #: Public TCP and web ports with SO_REUSEPORT: cluster nodes on one address share them.
    reuse_port: bool = False
    #: Failed auth attempts per source address: burst, then refill per minute.
    auth_failures_burst: int = 5
    auth_failures_per_min: float = 5.0
    #: Connections not authenticated yet, in all and per source address (per /64 for IPv6).
    max_preauth_connections: int = 256
    max_preauth_per_source: int = 16
    #: None: a plaintext carrier. (Built here, a config is plaintext unless told; the loader,
    #: what `listen` runs, defaults to a self-signed pair in the state directory.)
    tls: ServerTls | None = None
    #: Prometheus endpoint and admin API; None: off.
    metrics: Endpoint | None = None
    admin: Endpoint | None = None
    #: The web dashboard (`muxtunnel.web.dashboard`); None: off.
    dashboard: Endpoint | None = None
    #: Highest zstd level either side compresses with, whatever level a client asks for. An
    #: idle compressed stream holds 0.8 MiB at level 3 (zstd's default), 10 MiB at level 9
    #: (`python -m bench.micro.compression --memory`).
    compression_level_max: int = 3
    #: zstd memory one session may hold for its compressed visitor streams, each charged
    #: zstd's estimate with a full window (3.3 MiB at level 3: 19 streams); beyond it, new
    #: visitors go uncompressed (or are refused, for a client too old to be told).
    compression_budget_bytes: int = 64 * 1024 * 1024
    #: The shared web ports (None: off); `https` needs `http.domain`.
    http: HttpFront | None = None
    https: HttpsFront | None = None
    #: A cluster of `listen` nodes sharing names through a registry (None: a single server).
    cluster: ClusterConfig | None = None
    #: Sessions of clients that ask for it may go on over a new carrier after theirs broke
    #: (within `mux.resume_timeout_s`); their unacknowledged bytes are kept meanwhile
    #: (`mux.replay_budget_bytes` at most per session).
    resume: bool = True


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A client service's place in a load-balancing group: `group` and the keys that go with it."""

    name: str
    #: What the member proves to join (None: the group has no token of its own).
    token: Secret | None = None
    #: Its share of new visitors under a weighted policy; 0: no new visitors at all.
    weight: int = 1
    #: How its `up` checks the local target (None: the server's passive checks only).
    health: HealthSettings | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service the client exposes."""

    name: str
    type: ServiceType
    local_host: str
    local_port: int
    remote_port: int = 0  # 0: the server picks a free allowed port
    token: Secret | None = None  # None: the client's default token applies
    #: "zstd" to compress visitor bytes through the tunnel (TCP only), None for none.
    compression: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    #: HTTP and HTTPS services: their virtual-host options (None for tcp and udp).
    http: HttpOptions | None = None
    #: TCP, HTTP and HTTPS: the local service gets the visitor's address in a PROXY protocol
    #: header (HAProxy's spec) as the first bytes of each connection.
    proxy_protocol: ProxyProtocol | None = None
    #: A member of a load-balancing group (None: the service is its name's only registration).
    group: GroupSpec | None = None
    #: TCP and UDP: no public port; reached only through `muxtunnel visit` with one of
    #: `visitor_tokens` (secrets of their own, never the client token).
    private: bool = False
    visitor_tokens: tuple[Secret, ...] = ()

    @property
    def local(self) -> str:
        host = self.local_host
        return f"[{host}]:{self.local_port}" if ":" in host else f"{host}:{self.local_port}"


@dataclass(frozen=True, slots=True)
class VisitSpec:
    """One private service `muxtunnel visit` reaches, and where it serves it locally."""

    name: str
    type: Literal["tcp", "udp"]
    bind_host: str = "127.0.0.1"
    bind_port: int = 0  # 0: any free port (printed at start)
    #: The visitor token (None: the `visitor:` section's default one).
    token: Secret | None = None
    #: "zstd": the visitor's streams to the server are compressed (TCP only).
    compression: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL

    @property
    def bind(self) -> str:
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"{host}:{self.bind_port}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server_host: str = "127.0.0.1"
    server_port: int = DEFAULT_CONTROL_PORT
    #: Several servers (`client.servers`, `up --server A --server B`): every service registered
    #: with each, each its own session; the first is `server_host:server_port`. () : just that.
    servers: tuple[tuple[str, int], ...] = ()
    token: Secret | None = None
    services: tuple[ServiceSpec, ...] = ()
    mux: MuxConfig = field(default_factory=MuxConfig)
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: On SIGTERM: how long live visitor connections get to finish after the GoAway.
    drain_timeout_s: float = 5.0
    udp_flow_idle_s: float = 60.0
    #: UDP flows kept per service (each is a stream the server opened; the server bounds them
    #: by its session's streams too).
    udp_max_flows: int = 1024
    #: None: a plaintext carrier. (Built here, a config is plaintext unless told; the loader,
    #: what `up` runs, defaults to TLS trusted on first use.)
    tls: ClientTls | None = None
    metrics: Endpoint | None = None
    admin: Endpoint | None = None
    #: The HTTP inspector (`muxtunnel.web.inspector`): "auto" is on at `DEFAULT_INSPECT` (or
    #: the next free port) when the config has http services; "off"; or where it binds.
    inspect: Endpoint | Literal["auto", "off"] = "auto"
    #: Ask for resumable sessions: visitors' connections survive a broken carrier if a new one
    #: is up within `mux.resume_timeout_s`.
    resume: bool = True
    #: `muxtunnel visit` (the `visitor:` section): the private services it reaches; `token`
    #: is then the default visitor token, and `services` is empty.
    visits: tuple[VisitSpec, ...] = ()
    #: Ways to reach the server, the session on the best (`client._paths`); () : as routed.
    paths: tuple[PathSpec, ...] = ()
    path_tuning: PathTuning = field(default_factory=PathTuning)

    def per_server(self) -> tuple[ClientConfig, ...]:
        """This config once per server, each naming only that one."""
        if not self.servers:
            return (self,)
        return tuple(
            replace(self, server_host=host, server_port=port, servers=())
            for host, port in self.servers
        )

    def services_without_token(self) -> tuple[str, ...]:
        """Names of the services with no token: neither their own nor the default one."""
        specs: tuple[ServiceSpec | VisitSpec, ...] = (*self.services, *self.visits)
        return tuple(spec.name for spec in specs if not (spec.token or self.token))
