"""What the virtual-host engine counts, for a metrics collector and the admin API to read.

Plain mutable ints on the hot path (one attribute add per event, no locks: everything runs on
one event loop), and frozen snapshots (`snapshot()`) for whoever reads them from elsewhere.
Per service: final responses by status class, bytes each way, refusals by reason. Engine-wide:
refusals that happen before any service is known (unknown host, bad request, per-source cap).
Service counters outlive their routes, so totals never go back when a client reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "CountersSnapshot",
    "ServiceCounters",
    "ServiceCountersSnapshot",
    "VhostCounters",
]

#: Reasons a request or connection can be refused; the keys of the `refusals` maps.
REFUSAL_REASONS = (
    "bad_request",  # 400: the request broke HTTP/1.1
    "headers_too_large",  # 431: header bytes or count over the cap
    "head_timeout",  # the request head did not arrive within its deadline (slowloris)
    "unknown_host",  # 404: no route for the Host (or the path under it)
    "method_not_allowed",  # 405: CONNECT; we are no forward proxy
    "expectation_failed",  # 417: an Expect other than 100-continue
    "unauthorized",  # 401: basic auth missing or wrong
    "upstream_unavailable",  # 502: client offline, local dial failed, broken response
    "upstream_timeout",  # 504: the service did not answer in time
    "rate_limited",  # 429: the service's rate limits (`rate_limit`, `per_source`)
    "too_many_from_source",  # the per-source connection cap
    "too_many_sources",  # the per-source table is full
    "bad_client_hello",  # not a TLS ClientHello, too large or too slow
    "unknown_sni",  # no route for the SNI name (or none sent)
    "tls_handshake_failed",  # termination: the visitor's handshake failed
)


@dataclass(slots=True)
class ServiceCounters:
    """Live counters of one service; mutated by the engine only."""

    #: Final responses sent to visitors, by class: index 0 is 1xx (101 only), 4 is 5xx.
    responses: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    #: Bytes sent to the service (requests, bodies, upgraded streams) and back to visitors.
    bytes_in: int = 0
    bytes_out: int = 0
    #: Connections passed through raw (SNI routing; upgraded HTTP counts as a response).
    tunnels: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    def count_response(self, status: int) -> None:
        index = status // 100 - 1
        if 0 <= index < 5:
            self.responses[index] += 1

    def refuse(self, reason: str) -> int:
        """Count one refusal; returns the new count (for logging at doubling counts)."""
        count = self.refusals.get(reason, 0) + 1
        self.refusals[reason] = count
        return count

    def snapshot(self) -> ServiceCountersSnapshot:
        return ServiceCountersSnapshot(
            responses_1xx=self.responses[0],
            responses_2xx=self.responses[1],
            responses_3xx=self.responses[2],
            responses_4xx=self.responses[3],
            responses_5xx=self.responses[4],
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            tunnels=self.tunnels,
            refusals=MappingProxyType(dict(self.refusals)),
        )


@dataclass(frozen=True, slots=True)
class ServiceCountersSnapshot:
    """One service's counters at one instant."""

    responses_1xx: int
    responses_2xx: int
    responses_3xx: int
    responses_4xx: int
    responses_5xx: int
    bytes_in: int
    bytes_out: int
    tunnels: int
    refusals: Mapping[str, int]

    @property
    def requests(self) -> int:
        """Requests that got a final response (any class)."""
        return (
            self.responses_1xx
            + self.responses_2xx
            + self.responses_3xx
            + self.responses_4xx
            + self.responses_5xx
        )


@dataclass(frozen=True, slots=True)
class CountersSnapshot:
    """The whole engine's counters at one instant."""

    connections: int
    internal_errors: int
    refusals: Mapping[str, int]
    services: Mapping[str, ServiceCountersSnapshot]


class VhostCounters:
    """Engine-wide counters plus one `ServiceCounters` per service name ever routed."""

    def __init__(self) -> None:
        self.connections = 0
        #: Exceptions that reached a connection's barrier: bugs, never visitor mistakes.
        self.internal_errors = 0
        self.refusals: dict[str, int] = {}
        self.services: dict[str, ServiceCounters] = {}

    def service(self, name: str) -> ServiceCounters:
        """The counters of `name`, created on first use."""
        counters = self.services.get(name)
        if counters is None:
            counters = self.services[name] = ServiceCounters()
        return counters

    def forget(self, name: str) -> None:
        """Drop a service's counters (the integration decides when a name is gone for good)."""
        self.services.pop(name, None)

    def refuse(self, reason: str) -> int:
        """Count one refusal not tied to a service; returns the new count."""
        count = self.refusals.get(reason, 0) + 1
        self.refusals[reason] = count
        return count

    def snapshot(self) -> CountersSnapshot:
        return CountersSnapshot(
            connections=self.connections,
            internal_errors=self.internal_errors,
            refusals=MappingProxyType(dict(self.refusals)),
            services=MappingProxyType(
                {name: counters.snapshot() for name, counters in self.services.items()}
            ),
        )
