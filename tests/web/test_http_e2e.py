"""HTTP services end to end: real `listen` and `up` processes, real clients and servers.

Visitors are curl, urllib and a WebSocket client library; the services behind are the
threaded standard-library backend of the vhost tests (it answers with a JSON report of the
request it saw) and a `websockets` echo server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from e2e.harness import Harness, free_port, host_port
from vhost.helpers import backend
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from .web import DOMAIN, curl, get, metric, metrics, raw, wait_status, web_listen


def test_http_services_of_two_clients_and_of_one_share_the_port(harness: Harness) -> None:
    web = web_listen(harness)
    with backend("a") as a, backend("b") as b, backend("c") as c:
        up_a = harness.up(web.listen, http=[f"a={a.server_address[1]}"])
        two = [f"b={b.server_address[1]}", f"c=127.0.0.1:{c.server_address[1]}"]
        harness.up(web.listen, http=two)
        url, local = f"http://a.{DOMAIN}:{web.http_port}", f"127.0.0.1:{a.server_address[1]}"
        assert up_a.stdout().strip() == f"a http {url} -> {local}"
        # curl, with a Host header and with --resolve (as a browser would after DNS).
        answer = curl(f"http://127.0.0.1:{web.http_port}/path?q=1", "-H", f"Host: a.{DOMAIN}")
        assert answer.status == 200 and answer.json()["backend"] == "a"
        assert answer.json()["path"] == "/path?q=1"
        assert answer.seen("X-Forwarded-For") == ["127.0.0.1"]
        assert answer.seen("X-Forwarded-Host") == [f"a.{DOMAIN}"]
        assert answer.seen("X-Forwarded-Proto") == ["http"]
        for name in ("b", "c"):
            url = f"http://{name}.{DOMAIN}:{web.http_port}/"
            resolve = f"{name}.{DOMAIN}:{web.http_port}:127.0.0.1"
            answer = curl(url, "--resolve", resolve)
            assert answer.status == 200 and answer.json()["backend"] == name
        # Host is case-insensitive and its port is ignored.
        assert get(web.http_port, f"C.EXAMPLE.com:{web.http_port}").json()["backend"] == "c"


def test_one_keep_alive_connection_reaches_services_request_by_request(harness: Harness) -> None:
    web = web_listen(harness)
    with backend("a") as a, backend("b") as b:
        harness.up(web.listen, http=[f"a={a.server_address[1]}"])
        harness.up(web.listen, http=[f"b={b.server_address[1]}"])
        with socket.create_connection(("127.0.0.1", web.http_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            for name in ("a", "b", "a", "b"):
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}.{DOMAIN}\r\n\r\n".encode())
                status = reader.readline()
                assert status.startswith(b"HTTP/1.1 200"), status
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                assert f'"backend": "{name}"'.encode() in reader.read(length)


def test_404_502_504_400_end_to_end(harness: Harness) -> None:
    config = harness.write("listen.yaml", "server:\n  http:\n    response_timeout_s: 1\n")
    web = web_listen(harness, config=config)
    dead = free_port()  # nothing listens there: the client's local dial fails
    with backend("slow") as slow, backend("gone") as gone:
        harness.up(web.listen, http=[f"slow={slow.server_address[1]}", f"dead={dead}"])
        up = harness.up(web.listen, http=[f"gone={gone.server_address[1]}"])
        unknown = get(web.http_port, f"nope.{DOMAIN}")
        assert unknown.status == 404 and f"nope.{DOMAIN}".encode() in unknown.body
        failed = get(web.http_port, f"dead.{DOMAIN}")
        assert failed.status == 502 and b"not reachable" in failed.body
        started = time.monotonic()
        assert get(web.http_port, f"slow.{DOMAIN}", "/slow/3").status == 504
        assert time.monotonic() - started < 2.9  # the timeout, not the service, answered
        bad = raw(web.http_port, b"GARBAGE\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 "), bad[:200]
        # The client goes offline: its name answers 502 (reserved for it), not 404.
        assert get(web.http_port, f"gone.{DOMAIN}").status == 200
        up.stop()
        offline = wait_status(web.http_port, f"gone.{DOMAIN}", 502)
        assert b"not reachable" in offline.body


def test_taken_names_and_domains_are_refused_with_a_reason(harness: Harness) -> None:
    web = web_listen(harness)
    port = free_port()
    harness.up(web.listen, http=[f"app={port}"])
    same_name = harness.up(web.listen, http=[f"app={port}"], wait=False)
    assert same_name.wait_exit(20) == 1
    assert "already served by another client" in " ".join(same_name.error_lines())
    config = harness.write(
        "up.yaml",
        f"client:\n  services:\n    - {{name: other, type: http, local: {port}, subdomain: app}}\n",
    )
    same_subdomain = harness.up(web.listen, config=config, wait=False)
    assert same_subdomain.wait_exit(20) == 1
    assert f"app.{DOMAIN} is already served by another client" in " ".join(
        same_subdomain.error_lines()
    )
    config = harness.write(
        "up2.yaml",
        "client:\n  services:\n"
        f"    - {{name: mine, type: http, local: {port}, custom_domains: [www.example.net]}}\n",
    )
    not_allowed = harness.up(web.listen, config=config, wait=False)
    assert not_allowed.wait_exit(20) == 1
    assert "does not let service 'mine' claim www.example.net" in " ".join(
        not_allowed.error_lines()
    )


def test_custom_domains_and_locations_by_policy(harness: Harness) -> None:
    config = harness.write(
        "listen.yaml",
        "server:\n  services:\n    - {name: site, custom_domains: ['*.example.net']}\n",
    )
    web = web_listen(harness, config=config)
    with backend("site") as site, backend("api") as api:
        config = harness.write(
            "up.yaml",
            "client:\n  services:\n"
            f"    - {{name: site, type: http, local: {site.server_address[1]},"
            " custom_domains: [www.example.net]}\n"
            f"    - {{name: api, type: http, local: {api.server_address[1]}, subdomain: site,"
            " locations: [/api]}\n",
        )
        up = harness.up(web.listen, config=config, wait=False)
        announced = up.wait_announced(2)
        assert announced["api"].url == f"http://site.{DOMAIN}:{web.http_port}/api"
        assert get(web.http_port, "www.example.net").json()["backend"] == "site"
        assert get(web.http_port, f"site.{DOMAIN}", "/").json()["backend"] == "site"
        assert get(web.http_port, f"site.{DOMAIN}", "/api/v1").json()["backend"] == "api"
        assert get(web.http_port, f"site.{DOMAIN}", "/apix").json()["backend"] == "site"


def test_requests_by_status_class_in_metrics_status_and_admin(harness: Harness) -> None:
    web = web_listen(harness, endpoints=True)
    with backend("app") as app:
        harness.up(web.listen, http=[f"app={app.server_address[1]}"])
        for path in ("/", "/", "/status/404", "/status/503"):
            get(web.http_port, f"app.{DOMAIN}", path)
        get(web.http_port, f"nope.{DOMAIN}")
        values = metrics(web.metrics_port)
        for status_class, count in (("2xx", 2), ("4xx", 1), ("5xx", 1), ("3xx", 0)):
            labels = {"service": "app", "class": status_class}
            assert metric(values, "muxtunnel_http_responses_total", **labels) == count
        refusals = metric(
            values, "muxtunnel_http_refusals_total", service="", reason="unknown_host"
        )
        assert refusals == 1
        assert metric(values, "muxtunnel_http_connections_total") == 5
        assert metric(values, "muxtunnel_service_bytes_total", service="app", direction="in") > 0
        status = harness.run("status", "--admin", web.admin)
        assert status.returncode == 0, status.describe()
        text = status.stdout()
        assert f"http://app.{DOMAIN}:{web.http_port}" in text and "2xx 2" in text
        document = harness.run("status", "--admin", web.admin, "--json").stdout()
        assert f'"domain": "{DOMAIN}"' in document and '"urls": [' in document


def test_compressed_and_throttled_http_service(harness: Harness) -> None:
    rate = 256 * 1024
    config = harness.write(
        "listen.yaml", f"server:\n  services:\n    - {{name: app, bandwidth_bytes_per_s: {rate}}}\n"
    )
    web = web_listen(harness, config=config, endpoints=True)
    with backend("app") as app:
        up = harness.up(web.listen, http=[f"app={app.server_address[1]}"], extra=["--compress"])
        assert up.events("service registered")
        size = 768 * 1024
        started = time.monotonic()
        answer = get(web.http_port, f"app.{DOMAIN}", f"/bytes/{size}")
        elapsed = time.monotonic() - started
        assert answer.status == 200 and answer.body == b"x" * size
        # The bucket starts with a 50 ms burst: the rest takes its time at the rate.
        assert elapsed >= (size / rate) * 0.8, elapsed
        document = harness.run("status", "--admin", web.admin, "--json").stdout()
        row = next(s for s in json.loads(document)["services"] if s["name"] == "app")
        assert row["compression"] == "zstd" and row["limits"]["bandwidth_bytes_per_s"] == rate


def test_per_source_cap_on_the_shared_port_is_counted(harness: Harness) -> None:
    config = harness.write("listen.yaml", "server:\n  http:\n    max_connections_per_source: 2\n")
    web = web_listen(harness, config=config, endpoints=True)
    with backend("app") as app:
        harness.up(web.listen, http=[f"app={app.server_address[1]}"])
        idle = [socket.create_connection(("127.0.0.1", web.http_port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.3)
            try:
                request = f"GET / HTTP/1.1\r\nHost: app.{DOMAIN}\r\n\r\n".encode()
                refused = raw(web.http_port, request)
            except ConnectionResetError:  # the reset can beat connect() returning
                refused = b""
            assert refused == b""  # reset at once: no response, nothing held
        finally:
            for sock in idle:
                sock.close()
        wait_status(web.http_port, f"app.{DOMAIN}", 200)  # the cap frees with the connections
        values = metrics(web.metrics_port)
        reason = "too_many_from_source"
        assert metric(values, "muxtunnel_http_refusals_total", service="", reason=reason) >= 1


def test_hot_reload_adds_and_removes_an_http_service(harness: Harness) -> None:
    web = web_listen(harness)
    with backend("one") as one, backend("two") as two:
        first = f"    - {{name: one, type: http, local: {one.server_address[1]}}}\n"
        second = f"    - {{name: two, type: http, local: {two.server_address[1]}}}\n"
        config = harness.write("up.yaml", "client:\n  services:\n" + first)
        up = harness.up(web.listen, config=config, wait=False)
        up.wait_announced(1)
        assert get(web.http_port, f"two.{DOMAIN}").status == 404
        config.write_text("client:\n  services:\n" + first + second)
        assert up.wait_announced(2)["two"].url == f"http://two.{DOMAIN}:{web.http_port}"
        assert get(web.http_port, f"two.{DOMAIN}").json()["backend"] == "two"
        config.write_text("client:\n  services:\n" + second)
        wait_status(web.http_port, f"one.{DOMAIN}", 404)
        assert get(web.http_port, f"two.{DOMAIN}").json()["backend"] == "two"
        # A changed web option registers the service again: its new name, the old one gone.
        changed = second.replace("}", ", subdomain: deux, host_rewrite: 'localhost:1'}")
        config.write_text("client:\n  services:\n" + changed)
        answer = wait_status(web.http_port, f"deux.{DOMAIN}", 200)
        assert answer.seen("Host") == ["localhost:1"]
        assert get(web.http_port, f"two.{DOMAIN}").status == 404


@pytest.fixture
def websocket_echo() -> Iterator[int]:
    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.socket.getsockname()[1])
        finally:
            server.shutdown()
            thread.join(10)


def test_websocket_echo_through_the_tunnel(harness: Harness, websocket_echo: int) -> None:
    web = web_listen(harness)
    harness.up(web.listen, http=[f"ws={websocket_echo}"])
    sock = socket.create_connection(("127.0.0.1", web.http_port), timeout=10)
    uri = f"ws://ws.{DOMAIN}:{web.http_port}/chat"
    with connect(uri, sock=sock, open_timeout=10, close_timeout=5) as client:
        for message in ("hello", "x" * 200_000, b"\x00\xff binary"):
            client.send(message)
            assert client.recv(timeout=10) == message


def test_chunked_upload_streams_with_flat_memory(harness: Harness) -> None:
    upload_through(harness, 64 * 1024 * 1024, rss_growth_mib=32)


@pytest.mark.slow
def test_one_gib_chunked_upload_streams_with_flat_memory(harness: Harness) -> None:
    upload_through(harness, 1024 * 1024 * 1024, rss_growth_mib=32)


def upload_through(harness: Harness, size: int, rss_growth_mib: float) -> None:
    """A chunked upload of `size` bytes through listen+up; neither process's peak RSS may grow
    by more than `rss_growth_mib` (the body streams; it is never held whole)."""
    import hashlib
    import http.client

    from .web import peak_rss_mib

    web = web_listen(harness)
    with backend("sink") as sink:
        up = harness.up(web.listen, http=[f"sink={sink.server_address[1]}"])
        assert get(web.http_port, f"sink.{DOMAIN}").status == 200  # warm: both sides ran a request
        before = {p.name: peak_rss_mib(p.pid) for p in (web.listen, up)}
        block = bytes(range(256)) * 256  # 64 KiB
        digest = hashlib.sha256()

        def body() -> Iterator[bytes]:
            for _ in range(size // len(block)):
                digest.update(block)
                yield block

        conn = http.client.HTTPConnection("127.0.0.1", web.http_port, timeout=120)
        headers = {"Host": f"sink.{DOMAIN}", "Transfer-Encoding": "chunked"}
        conn.request("POST", "/upload", body=body(), encode_chunked=True, headers=headers)
        reply = conn.getresponse()
        report = reply.read()
        conn.close()
        assert reply.status == 200, report[:300]
        assert f'"body_bytes": {size}'.encode() in report
        assert f'"body_sha256": "{digest.hexdigest()}"'.encode() in report
        for proc in (web.listen, up):
            growth = peak_rss_mib(proc.pid) - before[proc.name]
            print(f"{proc.name}: peak RSS {before[proc.name]:.1f} -> +{growth:.1f} MiB")
            assert growth < rss_growth_mib, (proc.name, growth)


def test_http_service_needs_web_ports_on_the_server(harness: Harness) -> None:
    listen = harness.listen()
    up = harness.up(listen, http=[f"app={free_port()}"], wait=False)
    assert up.wait_exit(20) == 1
    assert "serves no http or https services" in " ".join(up.error_lines())
    assert host_port(listen.host, listen.port) == listen.address


def test_server_reload_closes_a_service_whose_custom_domain_is_no_longer_allowed(
    harness: Harness,
) -> None:
    policy = "server:\n  http:\n    custom_domains: ['*.example.net']\n"
    config = harness.write("listen.yaml", policy)
    web = web_listen(harness, config=config)
    with backend("shop") as shop:
        client = harness.write(
            "up.yaml",
            "client:\n  services:\n"
            f"    - {{name: shop, type: http, local: {shop.server_address[1]},"
            " custom_domains: [www.example.net]}\n",
        )
        up = harness.up(web.listen, config=client, wait=False)
        up.wait_announced(1)
        assert get(web.http_port, "www.example.net").json()["backend"] == "shop"
        config.write_text("server:\n  http:\n    custom_domains: []\n")
        wait_status(web.http_port, "www.example.net", 404)
        web.listen.wait_event("service closed by the server")
        assert get(web.http_port, f"shop.{DOMAIN}").status == 404
