"""HTTP and HTTPS virtual hosts on shared ports: routing by Host and SNI, forwarded headers,
WebSocket and other upgrades, PROXY protocol headers.

The server builds one `VhostEngine` around an `Upstream` (how to reach a service), registers
routes in `engine.http_routes` / `engine.tls_routes`, and passes each accepted connection to
`engine.serve_http` or `engine.serve_tls`. Everything else here is the parts of that.
"""

from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.counters import (
    CountersSnapshot,
    ServiceCounters,
    ServiceCountersSnapshot,
    VhostCounters,
)
from muxtunnel.vhost.engine import VhostEngine
from muxtunnel.vhost.headers import basic_auth_ok
from muxtunnel.vhost.limits import SourceLimiter, source_key
from muxtunnel.vhost.names import InvalidHostError, normalise_domain, normalise_host
from muxtunnel.vhost.proxy_protocol import encode_proxy_header, encode_v1, encode_v2
from muxtunnel.vhost.routes import (
    BasicAuth,
    Route,
    RouteConflict,
    RouteOptions,
    RouteTable,
    RouteTarget,
    basic_auth_token,
)
from muxtunnel.vhost.sni import ClientHelloError, parse_client_hello
from muxtunnel.vhost.tls_front import server_tls_context
from muxtunnel.vhost.upstream import (
    DirectUpstream,
    Upstream,
    UpstreamRefused,
    UpstreamUnavailable,
    Visitor,
)

__all__ = [
    "BasicAuth",
    "ClientHelloError",
    "CountersSnapshot",
    "DirectUpstream",
    "InvalidHostError",
    "Route",
    "RouteConflict",
    "RouteOptions",
    "RouteTable",
    "RouteTarget",
    "ServiceCounters",
    "ServiceCountersSnapshot",
    "SourceLimiter",
    "Upstream",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "VhostConfig",
    "VhostCounters",
    "VhostEngine",
    "Visitor",
    "basic_auth_ok",
    "basic_auth_token",
    "encode_proxy_header",
    "encode_v1",
    "encode_v2",
    "normalise_domain",
    "normalise_host",
    "parse_client_hello",
    "server_tls_context",
    "source_key",
]
