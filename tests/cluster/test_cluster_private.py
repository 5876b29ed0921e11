"""Private services across a cluster (three real nodes on redis-server): `muxtunnel visit`
at one node reaches a provider registered at another; its visitor token is checked by the
provider's node, and a wrong one is refused as on a single server."""

from __future__ import annotations

import json
import os
import socket

import pytest
from e2e.harness import IO_TIMEOUT_S, Harness, TcpEchoServer, UdpEchoServer, echo_roundtrip
from e2e.private import start_visit, visitor_token

from .nodes import Cluster, udp_roundtrip, wait_for

VAULT = "client:\n  services:\n    - {{name: vault, local: {port}, public: false,"\
        " visitor_token: [{tokens}]}}\n"


def test_visit_at_b_reaches_a_private_service_on_a(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer, udp_echo: UdpEchoServer
) -> None:
    a, b, c = cluster.nodes
    token = visitor_token()
    harness.up(a.proc, tcp=[f"ssh={tcp_echo.port}"], udp=[f"dns={udp_echo.port}"],
               extra=["--private", "--visitor-token", token])  # fmt: skip

    def known_at_b() -> bool:
        document = json.loads(harness.run("status", "--admin", b.admin, "--json").stdout())
        nodes = {n["node_id"]: n["services"] for n in document["cluster"]["nodes"]}
        return set(nodes.get("a", ())) >= {"ssh", "dns"}

    wait_for(known_at_b, 10, "the private services in B's view")
    _a_revocation_at_the_providers_node_cuts_visits_at_other_nodes(cluster, harness, tcp_echo)
    visit = start_visit(harness, b.proc, "ssh", token)
    host, port = visit.address("ssh")
    payload = os.urandom(256 << 10)
    assert echo_roundtrip(host, port, payload) == payload
    flows = start_visit(harness, b.proc, "dns", token, udp=True)
    datagrams = [os.urandom(n) for n in (1, 700)]
    assert udp_roundtrip(*flows.address("dns"), datagrams) == datagrams
    # A wrong token at C: refused, as a single server refuses it.
    wrong = start_visit(harness, c.proc, "ssh", visitor_token(), wait=False)
    assert wrong.wait_exit(15) == 1
    assert any("refused the visitor token" in line for line in wrong.error_lines())
    assert a.proc.events("visit from another node refused: no such private service here, "
                         "or no valid visitor token")  # fmt: skip


def _a_revocation_at_the_providers_node_cuts_visits_at_other_nodes(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """The provider at A drops one of its two tokens (its config is watched): the visit at B
    made with it is revoked as on one node (told, its connection reset); the visit at C made
    with the other token never notices. Then the provider stops and comes back: the visit
    at C is told both, as on one node."""
    a, b, c = cluster.nodes
    keep, revoke = visitor_token(), visitor_token()
    both = VAULT.format(port=tcp_echo.port, tokens=f"{keep}, {revoke}")
    config = harness.write("vault.yaml", both)
    provider = harness.up(a.proc, config=config)
    provider.wait_announced(1)
    kept = start_visit(harness, c.proc, "vault", keep)
    revoked = start_visit(harness, b.proc, "vault", revoke)
    with (
        socket.create_connection(kept.address("vault"), timeout=IO_TIMEOUT_S) as stays,
        socket.create_connection(revoked.address("vault"), timeout=IO_TIMEOUT_S) as cut,
    ):
        for sock in (stays, cut):
            sock.sendall(b"before")
            assert sock.recv(10) == b"before"
        config.write_text(VAULT.format(port=tcp_echo.port, tokens=keep))
        assert revoked.wait_exit(10) == 1
        assert any("visitor token revoked" in line for line in revoked.error_lines())
        with pytest.raises(ConnectionResetError):
            cut.sendall(b"after")
            assert cut.recv(10) == b""
        stays.sendall(b"after")
        assert stays.recv(10) == b"after"
    assert b.proc.events("visits revoked by the provider's node")
    provider.stop()
    kept.wait_event("the provider is offline: connections are reset until it is back")
    assert c.proc.events("private service offline")
    harness.up(a.proc, config=config).wait_announced(1)
    kept.wait_event("the provider is online")
    assert echo_roundtrip(*kept.address("vault"), b"again") == b"again"
