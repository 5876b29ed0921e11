"""A cluster of real processes: three `listen` nodes and a redis-server, all on loopback.

Node A, B and C bind their public ports on 127.0.0.1, .2 and .3, the same port numbers on
each; a service registered on A is reached through B and C byte-exact (TCP, UDP, HTTP by
host), its name is refused on B while A holds it, it serves again through B and C after A is
SIGKILLed, and a registry that stops for 10 s stops only new registrations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e.harness import Harness, TcpEchoServer, UdpEchoServer, free_port, host_port

from muxtunnel.cluster.testing import RedisServer

from .nodes import (
    CLIENT_FAST,
    DOMAIN,
    LEASE_S,
    Cluster,
    HttpTarget,
    NameServer,
    Relay,
    TlsTarget,
    http_get,
    read_name,
    tcp_roundtrip,
    tls_name,
    udp_roundtrip,
    wait_for,
)


def test_service_on_a_reached_through_b_and_c(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer, udp_echo: UdpEchoServer
) -> None:
    """TCP, UDP and HTTP by host: registered on A, byte-exact through every node."""
    web = HttpTarget("site")
    try:
        a = cluster.nodes[0]
        tcp_port, udp_port = free_port(), free_port()
        up = harness.up(
            a.proc,
            tcp=[f"echo={tcp_echo.port}:{tcp_port}"],
            udp=[f"dns={udp_echo.port}:{udp_port}"],
            http=[f"site={web.port}"],
        )
        payload = os.urandom(1 << 20)
        for node in cluster.nodes:
            got = wait_for(
                lambda node=node: tcp_roundtrip(node.host, tcp_port, payload),
                10, f"tcp through node {node.node_id}",
            )  # fmt: skip
            assert got == payload, f"node {node.node_id}: {len(got)} of {len(payload)} bytes"
            datagrams = [os.urandom(n) for n in (1, 512, 1400)]
            assert udp_roundtrip(node.host, udp_port, datagrams) == datagrams
            _status, body = wait_for(
                lambda node=node: _ok(http_get(node.host, node.http_port, f"site.{DOMAIN}", "/x")),
                10, f"http through node {node.node_id}",
            )  # fmt: skip
            # One X-Forwarded-For entry, the visitor's, through whichever node it came.
            assert body == b"site /x xff=127.0.0.1"
        assert up.running
    finally:
        web.close()


def test_https_by_sni_reached_through_every_node(
    cluster: Cluster, harness: Harness, tmp_path: Path
) -> None:
    """An HTTPS service (TLS passed through, routed by SNI) registered on A answers through B
    and C: the TLS bytes ride to A, whose engine routes them by SNI again."""
    target = TlsTarget("sec", tmp_path)
    try:
        harness.up(cluster.nodes[0].proc, https=[f"sec={target.port}"])
        for node in cluster.nodes:
            answer = wait_for(
                lambda node=node: tls_name(node.host, node.https_port, f"sec.{DOMAIN}"),
                10, f"https through node {node.node_id}",
            )  # fmt: skip
            assert answer == b"sec"
    finally:
        target.close()


def _ok(answer: tuple[int, bytes]) -> tuple[int, bytes] | None:
    return answer if answer[0] == 200 else None


def test_same_name_refused_on_b_while_a_holds_it(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """A second registration of a name, on another node, gets a single server's answer; so
    does a fixed port held on another node under another name."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    port = free_port()
    harness.up(a.proc, tcp=[f"echo={tcp_echo.port}:{port}"])
    second = harness.up(b.proc, tcp=[f"echo={tcp_echo.port}"], wait=False)
    assert second.wait_exit(15) != 0
    assert any("already served by another client" in line for line in second.error_lines()), (
        second.describe()
    )
    third = harness.up(b.proc, tcp=[f"other={tcp_echo.port}:{port}"], wait=False)
    assert third.wait_exit(15) != 0
    assert any(f"tcp port {port} is already in use" in line for line in third.error_lines()), (
        third.describe()
    )
    refused = b.proc.events("registration refused")
    assert {r["code"] for r in refused} == {"service_taken", "port_in_use"}


def test_sigkill_owner_serves_again_through_b_and_c(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer, figures: Any
) -> None:
    """A SIGKILLed: within lease_s plus the client's backoff, its client re-registers on B
    (through a relay that plays the DNS name over all nodes) and B and C serve it again."""
    a, b, c = cluster.nodes
    relay = Relay([(a.host, a.proc.port), (b.host, b.proc.port), (c.host, c.proc.port)])
    try:
        client_config = harness.write("client.yaml", CLIENT_FAST)
        port = free_port()
        up = harness.up(
            host_port("127.0.0.1", relay.port),
            tcp=[f"echo={tcp_echo.port}:{port}"],
            config=client_config,
        )
        payload = os.urandom(64 << 10)
        for node in (b, c):
            wait_for(lambda node=node: tcp_roundtrip(node.host, port, payload) == payload,
                     10, f"through {node.node_id} before the kill")  # fmt: skip
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # The bound: the lease, the client's backoff (reconnect_max_s 1 s, a few tries while
        # the name is still A's), a sync interval on C, and room for a loaded machine.
        bound_s = LEASE_S + 10.0
        for node in (b, c):
            wait_for(lambda node=node: tcp_roundtrip(node.host, port, payload, 2.0) == payload,
                     bound_s, f"through {node.node_id} after the kill")  # fmt: skip
        recovered_s = time.monotonic() - killed
        assert len(up.announcements()) >= 2  # registered again
        assert b.proc.events("cluster node up")
        figures.record(
            "cluster: service back through B and C after its node's SIGKILL",
            seconds=round(recovered_s, 2),
            lease_s=LEASE_S,
        )
    finally:
        relay.close()


def test_registry_stopped_10s(
    cluster: Cluster, harness: Harness, redis: RedisServer, tcp_echo: TcpEchoServer
) -> None:
    """redis-server gone for 10 s (killed: its data lost too): a visitor already connected
    through B keeps echoing, a new registration is refused with a clear reason and accepted
    once the registry is back; the nodes take their names again on their own."""
    a, b, c = cluster.nodes
    port = free_port()
    harness.up(a.proc, tcp=[f"one={tcp_echo.port}:{port}"])
    wait_for(lambda: tcp_roundtrip(b.host, port, b"ping") == b"ping", 10, "through B")
    with socket.create_connection((b.host, port), timeout=5) as visitor:
        redis.stop()
        stopped = time.monotonic()
        client_config = harness.write("client.yaml", CLIENT_FAST)
        late = harness.up(c.proc, tcp=[f"two={tcp_echo.port}"], config=client_config, wait=False)
        wait_for(lambda: c.proc.events("registration refused"), 10, "a refusal on C")
        refusal = c.proc.events("registration refused")[0]
        assert refusal["code"] == "registry_unavailable"
        assert "registry is unreachable" in refusal["detail"]
        n = 0
        while time.monotonic() - stopped < 10.0:
            message = f"still there {n}".encode()
            visitor.sendall(message)
            assert recv_exact(visitor, len(message)) == message
            n += 1
            time.sleep(0.5)
        assert late.running and not late.announcements()
        redis.start()
        late.wait_announced(1, timeout_s=15)
        visitor.sendall(b"after")
        assert recv_exact(visitor, 5) == b"after"
    for node in cluster.nodes:
        wait_for(lambda node=node: tcp_roundtrip(node.host, port, b"x") == b"x",
                 10, f"one through {node.node_id} after the outage")  # fmt: skip
    two = late.public("two")[1]
    for node in (a, b):
        wait_for(lambda node=node: tcp_roundtrip(node.host, two, b"y") == b"y",
                 10, f"two through {node.node_id}")  # fmt: skip


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_status_of_any_node_shows_the_whole_cluster(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """`muxtunnel status` against C lists A and B's clients and services; metrics carry the
    node id."""
    a, b, c = cluster.nodes
    harness.up(a.proc, tcp=[f"on-a={tcp_echo.port}"])
    harness.up(b.proc, tcp=[f"on-b={tcp_echo.port}"])

    def services_seen() -> dict[str, list[str]] | None:
        proc = harness.run("status", "--admin", c.admin, "--json")
        document = json.loads(proc.stdout())
        nodes = {n["node_id"]: n["services"] for n in document["cluster"]["nodes"]}
        return nodes if nodes.get("a") == ["on-a"] and nodes.get("b") == ["on-b"] else None

    nodes = wait_for(services_seen, 10, "both services in C's status")
    assert set(nodes) == {"a", "b", "c"}
    printed = harness.run("status", "--admin", c.admin).stdout()
    assert "cluster node c" in printed and "on-a" in printed and "on-b" in printed
    metrics_address = next(
        arg for flag, arg in zip(c.proc.argv, c.proc.argv[1:], strict=False) if flag == "--metrics"
    )
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    assert 'muxtunnel_cluster_nodes{node="c"} 3.0' in text
    assert 'muxtunnel_sessions{node="c"}' in text


def test_1000_services_over_three_nodes(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer, figures: Any
) -> None:
    """1000 services, a third registered at each node: all of them listed by any node's
    status, and a sample reached through nodes that do not hold them."""
    per_node = [range(0, 334), range(334, 667), range(667, 1000)]
    started = time.monotonic()
    clients = [
        harness.up(node.proc, tcp=[f"s{i}={tcp_echo.port}" for i in names], wait=False)
        for node, names in zip(cluster.nodes, per_node, strict=True)
    ]
    for client, names in zip(clients, per_node, strict=True):
        client.wait_announced(len(names), timeout_s=120)
    registered_s = time.monotonic() - started

    def listed() -> int | None:
        document = json.loads(
            harness.run("status", "--admin", cluster.nodes[2].admin, "--json").stdout()
        )
        count = sum(len(n["services"]) for n in document["cluster"]["nodes"])
        return count if count == 1000 else None

    wait_for(listed, 30, "1000 services in C's status", interval_s=0.5)
    listed_s = time.monotonic() - started
    for i in range(0, 1000, 97):
        owner = next(n for n, names in enumerate(per_node) if i in names)
        port = clients[owner].public(f"s{i}")[1]
        other = cluster.nodes[(owner + 1) % 3]
        data = b"s%d" % i

        def echoed(host: str = other.host, port: int = port, data: bytes = data) -> bool:
            return tcp_roundtrip(host, port, data) == data

        wait_for(echoed, 30, f"s{i} through node {other.node_id}")
    figures.record(
        "cluster: 1000 services over 3 nodes",
        seconds=round(time.monotonic() - started, 2),
        registered_s=round(registered_s, 2),
        all_listed_s=round(listed_s, 2),
    )


def test_group_members_on_two_nodes_serve_visitors_of_a_third(
    cluster: Cluster, harness: Harness
) -> None:
    """A TCP group with a fixed port, one member on A and one on B: visitors at C (no member)
    reach both; A and B serve their own members."""
    a, b, c = cluster.nodes
    targets = [NameServer("one"), NameServer("two")]
    try:
        port = free_port()
        for node, target in zip((a, b), targets, strict=True):
            harness.up(node.proc, tcp=[f"{target.name.decode()}={target.port}:{port}"],
                       extra=["--group", "shop"])  # fmt: skip
        seen: set[bytes] = set()

        def both() -> bool:
            seen.update(read_name(c.host, port) for _ in range(10))
            return seen >= {b"one", b"two"}

        wait_for(both, 10, "both members through C")
        assert seen == {b"one", b"two"}
        assert read_name(a.host, port) == b"one" and read_name(b.host, port) == b"two"
    finally:
        for target in targets:
            target.close()


def test_a_second_process_with_a_node_id_in_use_exits(cluster: Cluster, harness: Harness) -> None:
    """Two processes given one node id: the second waits out a lease (the first might be its
    own crashed self) and then exits with the reason; the first serves on."""
    a = cluster.nodes[0]
    config = harness.write(
        "dup.yaml", f"server:\n  cluster:\n    url: {cluster.redis.url}\n    lease_s: {LEASE_S}\n"
    )
    host = "127.0.0.4"
    dup = harness.listen(
        "--config", config, "--node-id", "a", "--advertise", f"{host}:{free_port(host)}",
        host=host, wait=False,
    )  # fmt: skip
    code = dup.wait_exit(LEASE_S + 15)
    assert code == 1, dup.describe()
    assert any("node id in use" in line for line in dup.error_lines()), dup.describe()
    assert a.proc.running


def test_udp_group_members_on_two_nodes_serve_flows_at_a_third(
    cluster: Cluster, harness: Harness
) -> None:
    """A UDP group with a fixed port, one member on A, one on B: flows at C reach both (each
    member's echo server tells them apart by what it records)."""
    a, b, c = cluster.nodes
    echoes = [UdpEchoServer(), UdpEchoServer()]
    try:
        port = free_port()
        for node, echo, name in zip((a, b), echoes, ("u1", "u2"), strict=True):
            harness.up(node.proc, udp=[f"{name}={echo.port}:{port}"], extra=["--group", "dns"])

        def both() -> bool:
            for n in range(6):  # new source ports: new flows, each picked anew
                datagram = b"flow %d" % n
                assert udp_roundtrip(c.host, port, [datagram]) in ([datagram], [])
            return all(echo.received for echo in echoes)

        wait_for(both, 15, "flows at C reaching members on A and B")
    finally:
        for echo in echoes:
            echo.close()
