"""What a visitor connection's handler may use of the engine (a Protocol, so `http` and
`tls_front` need not import `engine`, which imports them)."""

from __future__ import annotations

import ssl
from typing import Protocol

from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.counters import VhostCounters
from muxtunnel.vhost.limits import OnceSet
from muxtunnel.vhost.routes import RouteTable
from muxtunnel.vhost.upstream import Upstream


class EngineView(Protocol):
    """The engine's shared parts: configuration, routes, counters and the upstream."""

    config: VhostConfig
    upstream: Upstream
    counters: VhostCounters
    http_routes: RouteTable
    tls_routes: RouteTable
    tls_context: ssl.SSLContext | None
    unknown_names: OnceSet
