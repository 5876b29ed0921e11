"""Load-balancing groups spanning the nodes of a cluster (three real nodes on redis-server):
web groups by host and by SNI, members on two nodes one pool at every node; a TCP group's
picked port the group's on every node."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from e2e.harness import Harness, free_port

from .nodes import (
    LEASE_S,
    Cluster,
    HttpTarget,
    NameServer,
    Node,
    TlsTarget,
    http_get,
    read_name,
    tls_name,
    wait_for,
)

#: A member's health check that notices a dead target within a fifth of a second.
HEALTH = "health: {type: tcp, interval_s: 0.2, timeout_s: 0.2, unhealthy_after: 1}"


def _metric(node: Node, sample: str) -> float:
    """One sample of a node's metrics endpoint."""
    address = next(arg for flag, arg in zip(node.proc.argv, node.proc.argv[1:], strict=False)
                   if flag == "--metrics")  # fmt: skip
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    found = [line for line in text.splitlines() if line.startswith(sample + " ")]
    assert found, f"no {sample} in the metrics of node {node.node_id}"
    return float(found[0].split()[-1])


def _names(host: str, port: int, vhost: str, n: int) -> list[bytes]:
    """Who answered each of `n` GETs (the first word of the body; the status if not 200)."""
    answers = []
    for _ in range(n):
        status, body = http_get(host, port, vhost)
        answers.append(body.split(b" ")[0] if status == 200 else str(status).encode())
    return answers


def test_web_group_members_on_two_nodes_are_one_pool(
    cluster: Cluster, harness: Harness, tmp_path: Path
) -> None:
    """HTTP and HTTPS (SNI) groups, members on A and B: requests at A, B and C (no member)
    reach both, round robin; the group's host is refused to another client anywhere; B
    SIGKILLed: within a lease every request at A and C reaches A's member. (One cluster for
    the TCP group with a picked port too: a cluster takes seconds to start.)"""
    a, b, c = cluster.nodes
    targets = [HttpTarget("one"), HttpTarget("two")]
    tls_targets = [TlsTarget("one", tmp_path), TlsTarget("two", tmp_path)]
    try:
        for node, target, tls in zip((a, b), targets, tls_targets, strict=True):
            harness.up(
                node.proc, http=[f"m{node.node_id}={target.port}"], extra=["--group", "site"]
            )
            harness.up(node.proc, https=[f"s{node.node_id}={tls.port}"], extra=["--group", "sec"])
        vhost = "site.cluster.test"
        for node in (a, b, c):
            seen: set[bytes] = set()

            def both(node: Node = node, seen: set[bytes] = seen) -> bool:
                seen.update(_names(node.host, node.http_port, vhost, 4))
                return seen >= {b"one", b"two"}

            wait_for(both, 10, f"both members through node {node.node_id}")
            # Round robin over the two members' slots: four requests, two each.
            answers = _names(node.host, node.http_port, vhost, 4)
            assert sorted(answers) == [b"one", b"one", b"two", b"two"], (node.node_id, answers)
            # By SNI: the TLS bytes pass through to a member's node.
            sni: set[bytes] = set()

            def both_by_sni(node: Node = node, seen: set[bytes] = sni) -> bool:
                seen.update(tls_name(node.host, node.https_port, "sec.cluster.test")
                            for _ in range(4))  # fmt: skip
                return seen >= {b"one", b"two"}

            wait_for(both_by_sni, 10, f"both HTTPS members through node {node.node_id}")
        # Counted: C handed requests to the members' nodes, A handed some to B's member.
        assert (
            _metric(c, 'muxtunnel_cluster_forwarded_web_requests_total{node="c",to="holder"}') > 0
        )
        spread = 'muxtunnel_cluster_forwarded_web_requests_total{node="a",to="group_member"}'
        assert _metric(a, spread) > 0
        config = harness.write("other.yaml", "client:\n  services:\n"
                               f"    - {{name: other, type: http, local: {targets[0].port},"
                               " subdomain: site}\n")  # fmt: skip
        other = harness.up(c.proc, config=config, wait=False)
        assert other.wait_exit(15) != 0
        assert any("site.cluster.test is already served" in line for line in other.error_lines())
        _picked_port_is_the_groups_everywhere(cluster, harness)
        _a_node_whose_members_are_unhealthy_gets_no_requests(cluster, harness, targets[1])
        b.proc.send_signal(signal.SIGKILL)

        def only_one() -> bool:
            answers = [
                *_names(a.host, a.http_port, vhost, 3),
                *_names(c.host, c.http_port, vhost, 3),
            ]
            return answers == [b"one"] * 6

        wait_for(only_one, LEASE_S + 5, "only A's member after B's SIGKILL")
    finally:
        for closable in [*targets, *tls_targets]:
            closable.close()


def _a_node_whose_members_are_unhealthy_gets_no_requests(
    cluster: Cluster, harness: Harness, target: HttpTarget
) -> None:
    """Group "frail": A's member fails its health check (its target is down), B's is well:
    once A has written its member's health to the registry, every request at A (which has a
    member) and at C (which has none) reaches B's member, none is answered 5xx by A."""
    a, b, c = cluster.nodes
    for node, name, port in ((a, "fa", free_port("127.0.0.1")), (b, "fb", target.port)):
        config = harness.write(f"frail-{name}.yaml", "client:\n  services:\n"
                               f"    - {{name: {name}, type: http, local: {port},"
                               f" group: frail, {HEALTH}}}\n")  # fmt: skip
        harness.up(node.proc, config=config)
    vhost = "frail.cluster.test"

    def only_b() -> bool:
        answers = [*_names(a.host, a.http_port, vhost, 4), *_names(c.host, c.http_port, vhost, 4)]
        return answers == [b"two"] * 8

    wait_for(only_b, 10, "requests at A and C only to B's healthy member")
    answers = [*_names(a.host, a.http_port, vhost, 6), *_names(c.host, c.http_port, vhost, 6)]
    assert answers == [b"two"] * 12, answers


@pytest.mark.slow
def test_a_request_at_a_node_whose_members_failed_unseen_is_handed_on_once(
    cluster: Cluster, harness: Harness
) -> None:
    """The registry is down, so A cannot write that its member failed its health check: C
    (no member) still sends half of its requests to A, which hands each on to B's member
    rather than answering 503."""
    a, b, c = cluster.nodes
    targets = [HttpTarget("one"), HttpTarget("two")]
    try:
        for node, name, target in ((a, "ha", targets[0]), (b, "hb", targets[1])):
            config = harness.write(f"{name}.yaml", "client:\n  services:\n"
                                   f"    - {{name: {name}, type: http, local: {target.port},"
                                   f" group: handed, {HEALTH}}}\n")  # fmt: skip
            harness.up(node.proc, config=config)
        vhost = "handed.cluster.test"
        seen: set[bytes] = set()

        def both() -> bool:
            seen.update(_names(c.host, c.http_port, vhost, 4))
            return seen >= {b"one", b"two"}

        wait_for(both, 10, "both members through C")
        cluster.redis.stop()
        targets[0].close()
        a.proc.wait_event("group member health changed")
        assert _names(c.host, c.http_port, vhost, 8) == [b"two"] * 8
    finally:
        for target in targets:
            target.close()


def _picked_port_is_the_groups_everywhere(cluster: Cluster, harness: Harness) -> None:
    """A TCP group asking for no port: its first member's picked port becomes the group's
    cluster-wide; a member joining on another node gets the same port, and every node
    serves it (C, without a member, reaches both)."""
    a, b, c = cluster.nodes
    targets = [NameServer("one"), NameServer("two")]
    try:
        first = harness.up(a.proc, tcp=[f"one={targets[0].port}"], extra=["--group", "picked"])
        port = first.public("one")[1]
        second = harness.up(b.proc, tcp=[f"two={targets[1].port}"], extra=["--group", "picked"])
        assert second.public("two")[1] == port
        seen: set[bytes] = set()

        def both() -> bool:
            seen.update(read_name(c.host, port) for _ in range(10))
            return seen >= {b"one", b"two"}

        wait_for(both, 10, "both members through C")
        assert read_name(a.host, port) == b"one" and read_name(b.host, port) == b"two"
    finally:
        for target in targets:
            target.close()
