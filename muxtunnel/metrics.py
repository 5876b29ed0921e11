"""Prometheus metrics of `listen` and `up`, read from live state at scrape time.

Nothing on the data path updates a metric: a collector walks the server's (or client's) live
objects when Prometheus scrapes, on the event loop's thread (the endpoint is served by
`muxtunnel.httpd`, not by prometheus_client's thread), so it sees consistent state and costs
nothing between scrapes. Byte counters include the bytes of connections still open, so they grow
during a transfer, not only when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from muxtunnel.client import Client
    from muxtunnel.server import Server

__all__ = ["CONTENT_TYPE", "ClientCollector", "ServerCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "muxtunnel_"


def render(collector: Collector) -> bytes:
    """The text exposition of one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class _Families:
    """The metric families both roles share, filled per scrape."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.sessions = GaugeMetricFamily(
            _P + "sessions", "Authenticated client sessions (client: 1 while connected)"
        )
        self.services = GaugeMetricFamily(_P + "services", "Registered services")
        self.streams = GaugeMetricFamily(_P + "open_streams", "Open mux streams, all sessions")
        self.connections = GaugeMetricFamily(
            _P + "service_open_connections", "Open visitor connections (TCP)", labels=["service"]
        )
        self.bytes = CounterMetricFamily(
            _P + "service_bytes",
            "Visitor bytes per service; direction in = towards the service",
            labels=["service", "direction"],
        )
        self.connections_total = CounterMetricFamily(
            _P + "service_connections", "Visitor connections or UDP flows", labels=["service"]
        )
        self.dropped = CounterMetricFamily(
            _P + "udp_datagrams_dropped",
            "UDP datagrams dropped, by reason",
            labels=["service", "reason"],
        )
        self.rtt = GaugeMetricFamily(
            _P + "session_rtt_seconds", "Latest keepalive round trip", labels=["session"]
        )

    def service(self, name: str, bytes_in: int, bytes_out: int, open_: int, total: int) -> None:
        self.bytes.add_metric([name, "in"], bytes_in)
        self.bytes.add_metric([name, "out"], bytes_out)
        self.connections.add_metric([name], open_)
        self.connections_total.add_metric([name], total)

    def all(self) -> list[Metric]:
        return [
            self.sessions,
            self.services,
            self.streams,
            self.connections,
            self.bytes,
            self.connections_total,
            self.dropped,
            self.rtt,
        ]


class ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        f = _Families("server")
        live = [s for s in server.sessions.values() if s.authenticated]
        f.sessions.add_metric([], len(live))
        f.streams.add_metric([], sum(s.session.stream_count for s in live if s.has_session))
        f.services.add_metric([], len(server.registry.by_name))
        for session in live:
            if session.has_session and session.session.rtt_s is not None:
                f.rtt.add_metric([str(session.id)], session.session.rtt_s)
        for name, traffic in sorted(server.traffic.items()):
            f.service(
                name,
                traffic.bytes_in,
                traffic.bytes_out,
                len(traffic.live),
                traffic.connections_total,
            )
        for name, service in sorted(server.registry.by_name.items()):
            if service.type == "udp":  # counted by the forwarder, per registration
                udp = service.udp
                f.service(name, udp.bytes_in, udp.bytes_out, 0, udp.flows_opened)
                for reason, count in udp.dropped().items():
                    f.dropped.add_metric([name, reason], count)
        yield from f.all()
        failures = CounterMetricFamily(_P + "auth_failures", "Failed authentications")
        failures.add_metric([], server.auth_failures)
        yield failures


class ClientCollector(Collector):
    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        client = self.client
        f = _Families("client")
        session = client.session
        online = session is not None and not session.closed and client.connected.is_set()
        f.sessions.add_metric([], 1 if online else 0)
        f.streams.add_metric([], session.stream_count if online and session else 0)
        f.services.add_metric([], sum(1 for s in client.services.values() if s.public))
        if online and session is not None and session.rtt_s is not None:
            f.rtt.add_metric(["0"], session.rtt_s)
        for name, state in sorted(client.services.items()):
            traffic = client.traffic_of(name)
            if state.spec.type == "udp":
                udp = state.udp  # the client counts what flows back to visitors
                f.service(name, 0, udp.bytes_in, 0, udp.flows_opened)
                for reason, count in udp.dropped().items():
                    f.dropped.add_metric([name, reason], count)
            else:
                f.service(
                    name,
                    traffic.bytes_in,
                    traffic.bytes_out,
                    len(traffic.live),
                    traffic.connections_total,
                )
        yield from f.all()
        reconnects = CounterMetricFamily(_P + "reconnects", "Sessions to the server lost")
        reconnects.add_metric([], client.reconnects)
        yield reconnects
