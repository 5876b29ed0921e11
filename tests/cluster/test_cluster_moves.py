"""A client that moves between nodes of a cluster, or holds sessions at two of them (three
real nodes on redis-server). Both take over 3 s (`slow`: `make stress` runs them)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from e2e.harness import Harness, TcpEchoServer, free_port, host_port

from .nodes import (
    CLIENT_FAST,
    DOMAIN,
    LEASE_S,
    Cluster,
    HttpTarget,
    Relay,
    http_get,
    tcp_roundtrip,
    wait_for,
)

#: `server.http.offline_grace_s` by default: how long the old node kept answering 502 before.
OFFLINE_GRACE_S = 30.0


@pytest.mark.slow
def test_http_name_moved_to_another_node_answers_everywhere_at_once(
    cluster: Cluster, harness: Harness
) -> None:
    """The client of an HTTP name loses its session to A (A lives on) and registers at B:
    A and C route the name to B within a sync interval, not after A's offline grace."""
    a, b, c = cluster.nodes
    relay = Relay([(a.host, a.proc.port)])
    web = HttpTarget("site")
    try:
        # Without resumption the session to A ends with its carrier, and with it the claims
        # on the name (a suspended session keeps them; a client on two nodes is another case).
        config = harness.write("client.yaml", CLIENT_FAST + "  resume: false\n")
        up = harness.up(host_port("127.0.0.1", relay.port), http=[f"site={web.port}"],
                        config=config)  # fmt: skip
        vhost = f"site.{DOMAIN}"
        for node in cluster.nodes:
            wait_for(lambda node=node: http_get(node.host, node.http_port, vhost)[0] == 200,
                     10, f"site through {node.node_id}")  # fmt: skip
        relay.backends = [(b.host, b.proc.port)]
        relay.cut()
        wait_for(lambda: len(up.announcements()) >= 2, 15, "registered again at B")
        moved = time.monotonic()
        for node in (a, c):
            wait_for(lambda node=node: http_get(node.host, node.http_port, vhost)[0] == 200,
                     5, f"site through {node.node_id} after the move")  # fmt: skip
        assert time.monotonic() - moved < OFFLINE_GRACE_S / 3
        assert a.proc.events("web names moved to another node")
    finally:
        relay.close()
        web.close()


@pytest.mark.slow
def test_one_client_on_two_nodes_holds_its_names_from_both(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """`up --server A --server B`: both nodes take the registration (one client, two
    sessions), every node serves the port; a port the server picks is one port at both
    (A's pick: two nodes registering at once agree); A SIGKILLed: B and C serve on without
    a new registration, HTTP included (C's requests go to B at once, not 502 until A's lease
    runs out); another client is refused the name."""
    a, b, c = cluster.nodes
    port = free_port()
    web = HttpTarget("web")
    up = harness.up(
        a.proc, tcp=[f"echo={tcp_echo.port}:{port}", f"picked={tcp_echo.port}"],
        http=[f"twice={web.port}"], extra=["--server", b.proc.address],
    )  # fmt: skip
    wait_for(lambda: len(up.announcements()) == 6, 10, "registered at A and B")
    picked = {x.port for x in up.announcements() if x.name == "picked"}
    assert len(picked) == 1, up.announcements()
    payload = os.urandom(64 << 10)
    for node in cluster.nodes:
        for service_port in (port, *picked):
            wait_for(lambda node=node, p=service_port: tcp_roundtrip(node.host, p, payload)
                     == payload, 10, f"through {node.node_id}")  # fmt: skip
    vhost = f"twice.{DOMAIN}"
    wait_for(lambda: http_get(c.host, c.http_port, vhost)[0] == 200, 10, "HTTP through C")
    other = harness.up(c.proc, tcp=[f"echo={tcp_echo.port}"], wait=False)
    assert other.wait_exit(15) != 0
    assert any("already served by another client" in line for line in other.error_lines())
    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    a.proc.popen.wait(5)
    assert [http_get(c.host, c.http_port, vhost)[0] for _ in range(3)] == [200] * 3
    assert time.monotonic() - killed < LEASE_S  # A's names are still listed meanwhile
    assert tcp_roundtrip(b.host, port, payload) == payload  # B's own session: at once
    # Every visitor at C: to B (a visitor sent to A while its lease lives goes on to B).
    for _ in range(5):
        assert tcp_roundtrip(c.host, port, payload, 2.0) == payload
    assert len(up.announcements()) == 6  # nothing registered again
    web.close()
