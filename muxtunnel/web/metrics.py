"""Prometheus metrics of `listen` and `up`, read from a status snapshot at scrape time.

Nothing on the data path updates a metric: the collector takes a snapshot (`status()`) when
Prometheus scrapes, on the event loop's thread (the endpoint is served by `web.httpd`, not by
prometheus_client's thread), so it sees consistent state and costs nothing between scrapes.
Byte counters include the bytes of connections still open, so they grow during a transfer, not
only when it ends; they are per service name and outlive registrations, as counters must.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from muxtunnel.cluster_status import ClusterRow
from muxtunnel.status import ClientStatus, ServerStatus, Status

__all__ = ["CONTENT_TYPE", "StatusCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "muxtunnel_"


def render(collector: Collector) -> bytes:
    """The text exposition of one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class StatusCollector(Collector):
    """The metrics of either role, from the snapshot `status()` returns at each scrape."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        cluster = status.cluster if isinstance(status, ServerStatus) else None
        if cluster is None:
            yield from self._collect(status)
            return
        # A cluster node: every sample carries its node id, so one dashboard over all nodes
        # tells them apart even when they share an address (several nodes on one machine).
        for metric in [*self._collect(status), *_cluster_metrics(cluster)]:
            metric.samples = [
                sample._replace(labels={**sample.labels, "node": cluster.node_id})
                for sample in metric.samples
            ]
            yield metric

    def _collect(self, status: Status) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            _P + "sessions", "Authenticated client sessions (client: 1 while connected)"
        )
        sessions.add_metric([], len(status.sessions))
        streams = GaugeMetricFamily(_P + "open_streams", "Open mux streams, all sessions")
        streams.add_metric([], sum(row.streams for row in status.sessions))
        services = GaugeMetricFamily(_P + "services", "Registered services")
        services.add_metric([], sum(1 for row in status.services if row.public))
        rtt = GaugeMetricFamily(
            _P + "session_rtt_seconds", "Latest keepalive round trip", labels=["session"]
        )
        for session in status.sessions:
            if session.rtt_s is not None:
                rtt.add_metric([str(session.id)], session.rtt_s)
        connections = GaugeMetricFamily(
            _P + "service_open_connections", "Open visitor connections (TCP)", labels=["service"]
        )
        traffic = CounterMetricFamily(
            _P + "service_bytes",
            "Visitor bytes per service; direction in = towards the service",
            labels=["service", "direction"],
        )
        connections_total = CounterMetricFamily(
            _P + "service_connections", "Visitor connections or UDP flows", labels=["service"]
        )
        for row in status.traffic:
            traffic.add_metric([row.name, "in"], row.bytes_in)
            traffic.add_metric([row.name, "out"], row.bytes_out)
            connections.add_metric([row.name], row.open_connections)
            connections_total.add_metric([row.name], row.connections_total)
        dropped = CounterMetricFamily(
            _P + "udp_datagrams_dropped",
            "UDP datagrams dropped, by reason",
            labels=["service", "reason"],
        )
        carrier = CounterMetricFamily(
            _P + "service_carrier_bytes",
            "Compressed services' visitor bytes on the tunnel, both ways, by stage: plain (as "
            "visitors sent and got them) and compressed (on the carrier)",
            labels=["service", "stage"],
        )
        drops: Counter[tuple[str, str]] = Counter()  # a client with several servers: summed
        stages: Counter[tuple[str, str]] = Counter()
        for service in status.services:
            for reason, count in (service.udp_dropped or {}).items():
                drops[(service.name, reason)] += count
            for stage, count in (service.carrier_bytes or {}).items():
                stages[(service.name, stage)] += count
        for (name, reason), count in drops.items():
            dropped.add_metric([name, reason], count)
        for (name, stage), count in stages.items():
            carrier.add_metric([name, stage], count)
        refusals = CounterMetricFamily(
            _P + "refusals",
            "What a limit refused (or cut), by reason: connections, visitors, registrations",
            labels=["reason"],
        )
        for reason, count in sorted(status.refusals.items()):
            refusals.add_metric([reason], count)
        yield from (sessions, services, streams, connections, traffic, connections_total)
        yield from (dropped, rtt, refusals, carrier)
        yield from _resume_metrics(status)
        if isinstance(status, ServerStatus):
            failures = CounterMetricFamily(_P + "auth_failures", "Failed authentications")
            failures.add_metric([], status.auth_failures)
            yield failures
            visits = GaugeMetricFamily(
                _P + "service_visitor_sessions",
                "muxtunnel visit sessions allowed to reach a private service",
                labels=["service"],
            )
            for service in status.services:
                if service.private:
                    visits.add_metric([service.name], service.visitor_sessions)
            yield visits
            if status.web is not None:
                yield from _web_metrics(status)
            yield from _group_metrics(status)
        else:
            reconnects = CounterMetricFamily(_P + "reconnects", "Sessions to the server lost")
            reconnects.add_metric([], status.reconnects)
            yield reconnects
            healthy = GaugeMetricFamily(
                _P + "member_healthy",
                "A group member's local target passes its health check (1) or not (0)",
                labels=["service", "group"],
            )
            verdicts: dict[tuple[str, str], float] = {}  # several servers: the same checks
            for service in status.services:
                verdict = (service.health or "unknown").partition(":")[0]
                if service.group is not None and verdict != "unknown":
                    verdicts[(service.name, service.group)] = float(verdict == "healthy")
            for labels, value in verdicts.items():
                healthy.add_metric(list(labels), value)
            yield healthy
            connected = GaugeMetricFamily(
                _P + "server_connected",
                "A session to this server is up with its services registered (1) or not (0)",
                labels=["server"],
            )
            for server in status.servers:
                connected.add_metric([server.address], float(server.connected))
            yield connected
            yield from _path_metrics(status)


def _path_metrics(status: ClientStatus) -> Iterator[Metric]:
    """The paths of `client.paths` (`PathRow`): each one's measures, and the switches."""
    rtt = GaugeMetricFamily(
        _P + "path_rtt_seconds", "Smoothed round trip on each path to the server", labels=["path"]
    )
    loss = GaugeMetricFamily(
        _P + "path_loss_ratio", "Share of recent probes unanswered on each path", labels=["path"]
    )
    score = GaugeMetricFamily(
        _P + "path_score_seconds",
        "Each path's score, lower is better (min round trip plus loss penalty)",
        labels=["path"],
    )
    active = GaugeMetricFamily(
        _P + "path_active", "The session runs on this path (1) or not (0)", labels=["path"]
    )
    switches = CounterMetricFamily(
        _P + "path_switches", "The session moved to another path, by reason", labels=["reason"]
    )
    for server in status.servers:
        for path in server.paths:
            if path.rtt_s is not None:
                rtt.add_metric([path.name], path.rtt_s)
            if path.score is not None:
                score.add_metric([path.name], path.score)
            loss.add_metric([path.name], path.loss)
            active.add_metric([path.name], float(path.state == "active"))
        for reason, count in sorted(server.path_switches.items()):
            switches.add_metric([reason], count)
    yield from (rtt, loss, score, active, switches)


def _resume_metrics(status: Status) -> Iterator[Metric]:
    """Resumable sessions, either role (`ResumeRow`)."""
    row = status.resume
    resumes = CounterMetricFamily(_P + "resumes", "Sessions that went on over a new connection")
    resumes.add_metric([], row.resumes)
    failures = CounterMetricFamily(
        _P + "resume_failures", "Resumes that failed or were refused, by reason", labels=["reason"]
    )
    for reason, count in sorted(row.failures.items()):
        failures.add_metric([reason], count)
    suspended = GaugeMetricFamily(
        _P + "suspended_sessions", "Sessions whose connection is lost, waiting for a new one"
    )
    suspended.add_metric([], row.suspended)
    replay = GaugeMetricFamily(
        _P + "replay_bytes", "Bytes kept to send again on a new connection, all sessions"
    )
    replay.add_metric([], row.replay_bytes)
    peak = GaugeMetricFamily(
        _P + "replay_peak_bytes", "The most bytes one session has kept at once"
    )
    peak.add_metric([], row.replay_peak_bytes)
    yield from (resumes, failures, suspended, replay, peak)


def _cluster_metrics(cluster: ClusterRow) -> Iterator[Metric]:
    up = GaugeMetricFamily(_P + "cluster_registry_up", "The cluster registry answers (1) or not")
    up.add_metric([], float(cluster.registry_up))
    nodes = GaugeMetricFamily(_P + "cluster_nodes", "Nodes of the cluster at the last sync")
    nodes.add_metric([], len(cluster.nodes))
    peers = GaugeMetricFamily(_P + "cluster_peers", "Node-to-node sessions", labels=["direction"])
    peers.add_metric(["out"], len(cluster.peers_out))
    peers.add_metric(["in"], len(cluster.peers_in))
    mirrored = GaugeMetricFamily(_P + "cluster_mirrored_ports", "Ports bound for other nodes")
    mirrored.add_metric([], len(cluster.mirrored))
    forwarded = CounterMetricFamily(
        _P + "cluster_forwarded_visitors", "TCP visitors handed to the node holding their service"
    )
    forwarded.add_metric([], cluster.forwarded_total)
    web = CounterMetricFamily(
        _P + "cluster_forwarded_web_requests",
        "Web requests handed to another node: holding their route, or a group member's node",
        labels=["to"],
    )
    web.add_metric(["holder"], cluster.web_forwarded_total)
    web.add_metric(["group_member"], cluster.web_spread_total)
    yield from (up, nodes, peers, mirrored, forwarded, web)


def _web_metrics(status: ServerStatus) -> Iterator[Metric]:
    """The shared web ports: requests by status class, refusals by reason, connections."""
    assert status.web is not None
    responses = CounterMetricFamily(
        _P + "http_responses",
        "Final responses to web visitors by status class (1xx: switched protocols)",
        labels=["service", "class"],
    )
    refusals = CounterMetricFamily(
        _P + "http_refusals",
        "Web requests or connections refused, by reason (service empty: before routing)",
        labels=["service", "reason"],
    )
    tunnels = CounterMetricFamily(
        _P + "https_passthrough_connections",
        "TLS connections passed through by SNI",
        labels=["service"],
    )
    for row in status.web_traffic:
        for status_class, count in row.responses.items():
            responses.add_metric([row.name, status_class], count)
        for reason, count in row.refusals.items():
            refusals.add_metric([row.name, reason], count)
        tunnels.add_metric([row.name], row.tunnels)
    for reason, count in status.web.refusals.items():
        refusals.add_metric(["", reason], count)
    connections = CounterMetricFamily(
        _P + "http_connections", "Visitor connections accepted on the web ports"
    )
    connections.add_metric([], status.web.connections_total)
    errors = CounterMetricFamily(
        _P + "http_internal_errors", "Web visitor connections that ended in an internal error"
    )
    errors.add_metric([], status.web.internal_errors)
    yield from (responses, refusals, tunnels, connections, errors)


_CIRCUIT_STATES = ("closed", "open", "half_open")


def _group_metrics(status: ServerStatus) -> Iterator[Metric]:
    """Load-balancing groups: members by health, weight, load and circuit; rate limits."""
    member_labels = ["group", "member"]
    members = GaugeMetricFamily(_P + "group_members", "Members of a group", labels=["group"])
    picked = CounterMetricFamily(
        _P + "group_visitors", "Visitors given to a member (retries included)", labels=["group"]
    )
    retries = CounterMetricFamily(
        _P + "group_retries", "Visitors retried on another member after a failed dial",
        labels=["group"],
    )  # fmt: skip
    failed = CounterMetricFamily(
        _P + "group_failed_visitors",
        "Visitors no member could take (none available, or every dial failed)",
        labels=["group"],
    )
    gauges = {
        "healthy": GaugeMetricFamily(
            _P + "group_member_healthy", "Its client's health check passes (1) or not (0)",
            labels=member_labels,
        ),
        "available": GaugeMetricFamily(
            _P + "group_member_available", "It would get a new visitor now (1) or not (0)",
            labels=member_labels,
        ),
        "weight": GaugeMetricFamily(
            _P + "group_member_weight", "Its weight", labels=member_labels
        ),
        "open": GaugeMetricFamily(
            _P + "group_member_open_connections", "Visitors open on it", labels=member_labels
        ),
    }  # fmt: skip
    visitors = CounterMetricFamily(
        _P + "group_member_visitors", "Visitors given to it since it joined", labels=member_labels
    )
    dial_failures = CounterMetricFamily(
        _P + "group_member_dial_failures",
        "Visitors whose dial failed on it since it joined",
        labels=member_labels,
    )
    circuit = GaugeMetricFamily(
        _P + "group_member_circuit_state",
        "Its circuit breaker: 1 for the state it is in",
        labels=[*member_labels, "state"],
    )
    opened = CounterMetricFamily(
        _P + "group_member_circuit_opened", "Times its circuit opened since it joined",
        labels=member_labels,
    )  # fmt: skip
    for group in status.groups:
        members.add_metric([group.name], len(group.members))
        picked.add_metric([group.name], group.picked_total)
        retries.add_metric([group.name], group.retries_total)
        failed.add_metric([group.name], group.failed_total)
        for row in group.members:
            labels = [group.name, row.id]
            gauges["healthy"].add_metric(labels, float(row.healthy))
            gauges["available"].add_metric(labels, float(row.available))
            gauges["weight"].add_metric(labels, row.weight)
            gauges["open"].add_metric(labels, row.open_connections)
            visitors.add_metric(labels, row.visitors_total)
            dial_failures.add_metric(labels, row.dial_failures)
            opened.add_metric(labels, row.circuit_opened_total)
            for state in _CIRCUIT_STATES:
                circuit.add_metric([*labels, state], float(row.circuit == state))
    admitted = CounterMetricFamily(
        _P + "rate_limit_admitted", "Visitors the rate limits let in", labels=["service"]
    )
    refused = CounterMetricFamily(
        _P + "rate_limit_refusals",
        "Visitors the rate limits refused, by reason (TCP reset, HTTP 429, no UDP flow)",
        labels=["service", "reason"],
    )
    for limits in status.admissions:
        admitted.add_metric([limits.name], limits.admitted_total)
        for reason, count in limits.refused.items():
            refused.add_metric([limits.name, reason], count)
    yield from (members, picked, retries, failed, *gauges.values(), visitors, dial_failures)
    yield from (circuit, opened, admitted, refused)
