"""Routing through the engine on a real port: hosts, locations, keep-alive across services."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess

from .helpers import TIMEOUT_S, Proxy, address_of, backend, read_responses, request, require_tool


def test_two_hosts_on_one_port_reach_their_own_services(proxy: Proxy) -> None:
    with backend("alpha") as alpha, backend("beta") as beta:
        proxy.add_http("alpha", ["alpha.example.com"], address_of(alpha))
        proxy.add_http("beta", ["beta.example.com", "www.beta.test"], address_of(beta))
        assert request(proxy.http_port, "alpha.example.com").json()["backend"] == "alpha"
        assert request(proxy.http_port, "beta.example.com").json()["backend"] == "beta"
        assert request(proxy.http_port, "www.beta.test").json()["backend"] == "beta"
        # Port ignored, case folded, trailing dot dropped.
        assert request(proxy.http_port, "ALPHA.Example.com.:8080").json()["backend"] == "alpha"


def test_curl_with_host_header_and_resolve(proxy: Proxy) -> None:
    curl = require_tool("curl")
    with backend("alpha") as alpha, backend("beta") as beta:
        proxy.add_http("alpha", ["alpha.example.com"], address_of(alpha))
        proxy.add_http("beta", ["beta.example.com"], address_of(beta))
        port = proxy.http_port
        by_header = subprocess.run(
            [curl, "-sS", "--max-time", "10", "-H", "Host: alpha.example.com",
             f"http://127.0.0.1:{port}/via-header"],
            capture_output=True, check=True, timeout=TIMEOUT_S + 5,
        )  # fmt: skip
        assert b'"backend": "alpha"' in by_header.stdout
        assert b'"/via-header"' in by_header.stdout
        # --resolve: curl connects to the proxy but speaks to beta.example.com by name, and
        # reuses one connection for both URLs (keep-alive across two services).
        resolved = subprocess.run(
            [curl, "-sS", "--max-time", "10",
             "--resolve", f"beta.example.com:{port}:127.0.0.1",
             "--resolve", f"alpha.example.com:{port}:127.0.0.1",
             f"http://beta.example.com:{port}/one", f"http://alpha.example.com:{port}/two"],
            capture_output=True, check=True, timeout=TIMEOUT_S + 5,
        )  # fmt: skip
        out = resolved.stdout
        assert out.index(b'"backend": "beta"') < out.index(b'"backend": "alpha"')


def test_unicode_host_reaches_its_punycode_route(proxy: Proxy) -> None:
    with backend("idn") as idn:
        proxy.add_http("idn", ["bücher.example"], address_of(idn))
        reply = request(proxy.http_port, "xn--bcher-kva.example")
        assert reply.json()["backend"] == "idn"


def test_longest_location_prefix_wins(proxy: Proxy) -> None:
    with backend("site") as site, backend("api") as api, backend("v2") as v2:
        proxy.add_http("site", ["app.example.com"], address_of(site))
        proxy.add_http("api", ["app.example.com"], address_of(api), locations=["/api"])
        proxy.add_http("v2", ["app.example.com"], address_of(v2), locations=["/api/v2/"])
        port = proxy.http_port
        cases = {
            "/": "site",
            "/apix": "site",  # whole segments only
            "/api": "api",
            "/api/users?id=1": "api",
            "/api/v2": "v2",
            "/api/v2/items": "v2",
            "/api/v2/../v1": "api",  # routes by the normalised path
            "/%61pi/v2/x": "v2",
        }
        for path, expected in cases.items():
            reply = request(port, "app.example.com", path)
            assert reply.json()["backend"] == expected, path
            assert reply.json()["path"] == path  # forwarded as sent


def test_keep_alive_connection_switches_services_and_reuses_upstreams(proxy: Proxy) -> None:
    with backend("alpha") as alpha, backend("beta") as beta:
        proxy.add_http("alpha", ["alpha.example.com"], address_of(alpha))
        proxy.add_http("beta", ["beta.example.com"], address_of(beta))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        try:
            seen = []
            for host in (
                ["alpha.example.com"] * 3 + ["beta.example.com"] * 2 + ["alpha.example.com"]
            ):
                reply = request(proxy.http_port, host, connection=conn)
                seen.append((reply.json()["backend"], reply.json()["client_port"]))
            visitor_socket = conn.sock
        finally:
            conn.close()
        assert visitor_socket is not None  # http.client kept one connection throughout
        assert [name for name, _ in seen] == ["alpha"] * 3 + ["beta"] * 2 + ["alpha"]
        # Same target back to back: the upstream connection is reused; a switch opens anew.
        ports = [port for _, port in seen]
        assert ports[0] == ports[1] == ports[2]
        assert ports[3] == ports[4] != ports[2]
        assert ports[5] not in (ports[0], ports[3])
        assert alpha.requests == 4 and beta.requests == 2


def test_pipelined_requests_to_two_hosts_answer_in_order(proxy: Proxy) -> None:
    with backend("alpha") as alpha, backend("beta") as beta:
        proxy.add_http("alpha", ["alpha.example.com"], address_of(alpha))
        proxy.add_http("beta", ["beta.example.com"], address_of(beta))
        pipelined = (
            b"".join(
                f"GET /n{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                for i, host in enumerate(
                    ["alpha.example.com", "beta.example.com", "alpha.example.com"]
                )
            )
            + b"POST /n3 HTTP/1.1\r\nHost: beta.example.com\r\nContent-Length: 5\r\n\r\nhello"
        )
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(pipelined)
            responses = read_responses(sock, 4)
        reports = [json.loads(response.body) for response in responses]
        assert [r["path"] for r in reports] == ["/n0", "/n1", "/n2", "/n3"]
        assert [r["backend"] for r in reports] == ["alpha", "beta", "alpha", "beta"]
        assert reports[3]["body_bytes"] == 5


def test_counters_count_responses_by_class_and_bytes(proxy: Proxy) -> None:
    with backend("alpha") as alpha:
        proxy.add_http("alpha", ["alpha.example.com"], address_of(alpha))
        request(proxy.http_port, "alpha.example.com", "/")
        request(proxy.http_port, "alpha.example.com", "/status/302")
        request(proxy.http_port, "alpha.example.com", "/status/503")
        request(proxy.http_port, "alpha.example.com", "/", method="POST", body=b"x" * 1000)
        request(proxy.http_port, "nobody.example.com", "/")
        snap = proxy.snapshot()
        counters = snap.services["alpha"]
        assert (counters.responses_2xx, counters.responses_3xx, counters.responses_5xx) == (2, 1, 1)
        assert counters.requests == 4
        assert counters.bytes_in > 1000  # heads and the body
        assert counters.bytes_out > 200
        assert snap.refusals["unknown_host"] == 1
        assert snap.connections == 5
