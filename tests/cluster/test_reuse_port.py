"""`server.reuse_port`: two cluster nodes on one machine (one address) share its public ports
(a service's TCP port and the HTTP port); the kernel spreads visitors over both, and the node
without the service hands its share to the one with it. Real processes on redis-server."""

from __future__ import annotations

import os
import urllib.request

import pytest
from e2e.harness import Harness, TcpEchoServer, free_port

from muxtunnel.cluster.testing import RedisServer

from .nodes import DOMAIN, LEASE_S, HttpTarget, http_get, tcp_roundtrip, wait_for

HOST = "127.0.0.1"


def _forwarded(metrics: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    sample = 'muxtunnel_cluster_forwarded_visitors_total{node="b"}'
    found = [line for line in text.splitlines() if line.startswith(sample + " ")]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.slow
def test_two_nodes_on_one_address_share_the_public_ports(
    harness: Harness, redis: RedisServer, tcp_echo: TcpEchoServer
) -> None:
    http_port = free_port(HOST)
    config = harness.write(
        "node.yaml",
        f"server:\n  reuse_port: true\n  cluster:\n    url: {redis.url}\n    lease_s: {LEASE_S}\n",
    )
    nodes, metrics = [], []
    for node_id in ("a", "b"):
        metrics.append(f"{HOST}:{free_port(HOST)}")
        proc = harness.listen(
            "--config", config, "--node-id", node_id, "--advertise", f"{HOST}:{free_port(HOST)}",
            "--public-host", HOST, "--http-bind", f"{HOST}:{http_port}", "--domain", DOMAIN,
            "--metrics", metrics[-1], host=HOST,
        )  # fmt: skip
        proc.wait_event("cluster node up")
        nodes.append(proc)
    port = free_port(HOST)
    web = HttpTarget("web")
    try:
        harness.up(nodes[0], tcp=[f"echo={tcp_echo.port}:{port}"], http=[f"site={web.port}"])
        payload = os.urandom(4096)
        # B binds the port too once it has read the registry; then the kernel spreads new
        # connections over both (by a hash of their addresses).

        def reached_b() -> bool:
            assert tcp_roundtrip(HOST, port, payload) == payload
            return _forwarded(metrics[1]) > 0

        wait_for(reached_b, 10, "a visitor that reached B")
        for _ in range(40):
            assert tcp_roundtrip(HOST, port, payload) == payload
        for _ in range(10):
            assert http_get(HOST, http_port, f"site.{DOMAIN}")[0] == 200
    finally:
        web.close()
