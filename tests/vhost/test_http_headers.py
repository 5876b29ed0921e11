"""What the service and the visitor see of each other's headers, and basic auth."""

from __future__ import annotations

import base64
import socket

from muxtunnel.vhost import BasicAuth, RouteOptions

from .helpers import TIMEOUT_S, Proxy, address_of, backend, read_responses, request


def test_forwarded_headers_describe_the_visitor(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        reply = request(
            proxy.http_port,
            "App.Example.com:8080",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "Forwarded": "for=203.0.113.9",
                "X-Forwarded-Proto": "https",  # a visitor's claim: replaced, plain HTTP here
                "X-Forwarded-Host": "evil.example",
            },
        )
        assert reply.seen_header("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
        assert reply.seen_header("X-Forwarded-Proto") == ["http"]
        assert reply.seen_header("X-Forwarded-Host") == ["App.Example.com:8080"]
        (forwarded,) = reply.seen_header("Forwarded")
        first, ours = forwarded.split(", ")
        assert first == "for=203.0.113.9"
        params = dict(part.split("=", 1) for part in ours.split(";"))
        assert params["for"].startswith('"127.0.0.1:') and params["for"].endswith('"')
        assert params["host"] == '"App.Example.com:8080"'
        assert params["proto"] == "http"
        assert reply.seen_header("Host") == ["App.Example.com:8080"]


def test_host_rewrite_and_header_set_remove_reach_the_service(proxy: Proxy) -> None:
    options = RouteOptions(
        host_rewrite="localhost:3000",
        set_headers=(("X-Tunnel", "muxtunnel"), ("User-Agent", "rewritten")),
        remove_headers=("Cookie", "X-Debug"),
    )
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app), options=options)
        reply = request(
            proxy.http_port,
            "app.example.com",
            headers={"Cookie": "session=1", "X-Debug": "1", "User-Agent": "curl", "X-Keep": "yes"},
        )
        assert reply.seen_header("Host") == ["localhost:3000"]
        assert reply.seen_header("X-Forwarded-Host") == ["app.example.com"]
        assert reply.seen_header("X-Tunnel") == ["muxtunnel"]
        assert reply.seen_header("User-Agent") == ["rewritten"]
        assert reply.seen_header("Cookie") == [] and reply.seen_header("X-Debug") == []
        assert reply.seen_header("X-Keep") == ["yes"]


def test_hop_by_hop_headers_are_removed_both_ways(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        reply = request(
            proxy.http_port,
            "app.example.com",
            headers={
                "Connection": "X-Private, keep-alive",
                "X-Private": "hop",
                "Keep-Alive": "timeout=5",
                "Proxy-Connection": "keep-alive",
                "TE": "trailers",
                "Upgrade": "h2c",  # without `Connection: upgrade` it is no upgrade request
                "X-End": "end",
            },
        )
        for name in ("Connection", "X-Private", "Keep-Alive", "Proxy-Connection", "TE", "Upgrade"):
            assert reply.seen_header(name) == [], name
        assert reply.seen_header("X-End") == ["end"]
        # The backend's chunked response names X-Hop in Connection and sends Keep-Alive.
        chunked = request(proxy.http_port, "app.example.com", "/chunked-response")
        assert chunked.body == b"hello chunked world"
        assert chunked.headers["X-Hop"] is None and chunked.headers["Keep-Alive"] is None
        assert chunked.headers["X-End-To-End"] == "kept"
        assert chunked.headers["Transfer-Encoding"] == "chunked"  # re-framed by h11


def test_ipv6_visitor_is_quoted_in_forwarded() -> None:
    from muxtunnel.vhost.headers import ForwardedFor, forwarded_element

    visitor = ForwardedFor("2001:db8::1", 4711)
    assert visitor.xff == b"2001:db8::1"
    element = forwarded_element(visitor, b"app.example.com", b"https")
    assert element == b'for="[2001:db8::1]:4711";host=app.example.com;proto=https'
    mapped = ForwardedFor("::ffff:192.0.2.7", 80)
    assert mapped.xff == b"192.0.2.7" and mapped.forwarded_for == b'"192.0.2.7:80"'


def test_one_visitors_requests_to_other_hosts_and_protos_each_get_their_own_forwarded() -> None:
    """The element a connection made for its last request is reused only for the same host
    and proto: nothing of one request's leaks into the next."""
    from muxtunnel.vhost.headers import ForwardedFor, forwarded_element, request_headers

    visitor = ForwardedFor("192.0.2.7", 4711)
    raw = [(b"Forwarded", b"for=client"), (b"Accept", b"*/*")]
    for host, proto in [(b"a.example", b"http"), (b"a.example", b"http"), (b"b.example", b"http"),
                        (b"b.example", b"https"), (b"a.example", b"http")]:  # fmt: skip
        headers = dict(request_headers(raw, visitor=visitor, proto=proto, host=host))
        fresh = forwarded_element(ForwardedFor("192.0.2.7", 4711), host, proto)
        assert headers[b"Forwarded"] == b"for=client, " + fresh
        assert headers[b"X-Forwarded-Host"] == host and headers[b"X-Forwarded-Proto"] == proto


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_401_then_200_and_the_password_stays_with_us(proxy: Proxy) -> None:
    options = RouteOptions(basic_auth=BasicAuth("alice", "s3cret", realm="staging"))
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app), options=options)
        missing = request(proxy.http_port, "app.example.com")
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"] == 'Basic realm="staging", charset="UTF-8"'
        wrong = request(
            proxy.http_port, "app.example.com", headers={"Authorization": _basic("alice", "nope")}
        )
        assert wrong.status == 401
        other_scheme = request(
            proxy.http_port, "app.example.com", headers={"Authorization": "Bearer x"}
        )
        assert other_scheme.status == 401
        good = request(
            proxy.http_port, "app.example.com", headers={"Authorization": _basic("alice", "s3cret")}
        )
        assert good.status == 200
        assert good.seen_header("Authorization") == []
        assert app.requests == 1
        counters = proxy.snapshot().services["app"]
        assert counters.refusals["unauthorized"] == 3
        assert (counters.responses_2xx, counters.responses_4xx) == (1, 3)


def test_401_keeps_a_bodiless_connection_alive(proxy: Proxy) -> None:
    options = RouteOptions(basic_auth=BasicAuth("alice", "s3cret"))
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app), options=options)
        auth = _basic("alice", "s3cret")
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            with_auth = f"GET / HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: {auth}\r\n\r\n"
            sock.sendall(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n" + with_auth.encode())
            first, second = read_responses(sock, 2)
        assert (first.status, second.status) == (401, 200)
        assert "close" not in first.headers.get("connection", "")


def test_ipv6_visitor_on_loopback_reaches_the_service_with_its_address() -> None:
    import os

    import pytest
    from anyio.from_thread import start_blocking_portal

    from muxtunnel.transport import listen_tcp, local_port
    from muxtunnel.vhost import DirectUpstream, RouteTarget, VhostEngine

    def unavailable(why: str) -> None:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(why)

    if not socket.has_ipv6:
        unavailable("no IPv6 on this machine")
    with backend("app") as app, start_blocking_portal("asyncio") as portal:
        engine = VhostEngine(DirectUpstream({"app": address_of(app)}))
        engine.http_routes.add(RouteTarget("app", "c1"), ["app.example.com"])
        try:
            listener = portal.call(listen_tcp, "::1", 0)
        except Exception as exc:  # no ::1 configured
            unavailable(f"cannot listen on ::1: {exc}")
        task = portal.start_task_soon(listener.serve, engine.serve_http)
        try:
            with socket.create_connection(("::1", local_port(listener)), timeout=TIMEOUT_S) as sock:
                port = sock.getsockname()[1]
                sock.sendall(
                    b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n"
                )
                (reply,) = read_responses(sock, 1)
        finally:
            task.cancel()
            portal.call(listener.aclose)
        report = reply.body.decode()
        assert '["X-Forwarded-For", "::1"]' in report
        assert f'for=\\"[::1]:{port}\\"' in report
