"""Names and the route table, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from muxtunnel.vhost import (
    BasicAuth,
    InvalidHostError,
    RouteConflict,
    RouteOptions,
    RouteTable,
    RouteTarget,
    normalise_domain,
    normalise_host,
)
from muxtunnel.vhost.routes import normalise_location, routing_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("app.example.com", "app.example.com"),
        ("App.EXAMPLE.com", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("app.example.com:8080", "app.example.com"),
        ("app.example.com.:80", "app.example.com"),
        ("app.example.com:", "app.example.com"),
        (b"app.example.com", "app.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("bücher.example".encode(), "xn--bcher-kva.example"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("my_app.internal", "my_app.internal"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[2001:DB8:0::1]", "[2001:db8::1]"),
    ],
)
def test_normalise_host(raw: str | bytes, expected: str) -> None:
    assert normalise_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", ".", "a..b", "-app.example.com", "app-.example.com", "app example.com", "app/x",
     "a" * 64 + ".com", ("a" * 60 + ".") * 5 + "com", "app.example.com:http", "[::1", "[nope]",
     "[::1]x", "xn--zz.example", b"\xff\xfe", "app.example.com:123456", "a@b.com"],
)  # fmt: skip
def test_invalid_hosts_are_refused(raw: str | bytes) -> None:
    with pytest.raises(InvalidHostError):
        normalise_host(raw)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_normalise_host_refuses_only_with_invalid_host_error(raw: str | bytes) -> None:
    try:
        name = normalise_host(raw)
    except InvalidHostError:
        return
    assert name == normalise_host(name)  # a normalised name is its own normal form
    assert name.isascii() and name == name.lower()


def test_normalise_domain_allows_wildcards_and_no_ports() -> None:
    assert normalise_domain("*.Example.COM") == "*.example.com"
    with pytest.raises(InvalidHostError):
        normalise_domain("app.example.com:80")
    with pytest.raises(InvalidHostError):
        normalise_domain("*.*.example.com")


def target(service: str, owner: str = "c1", **options: object) -> RouteTarget:
    return RouteTarget(service, owner, RouteOptions(**options))  # type: ignore[arg-type]


def test_longest_location_and_segment_boundaries() -> None:
    table = RouteTable()
    table.add(target("site"), ["app.example.com"])
    table.add(target("api"), ["app.example.com"], ["/api/"])
    table.add(target("v2"), ["app.example.com"], ["/api/v2"])
    lookup = lambda path: table.lookup("app.example.com", path).target.service  # noqa: E731
    assert lookup("/") == "site"
    assert lookup("/apix") == "site"
    assert lookup("/api") == "api"
    assert lookup("/api/") == "api"
    assert lookup("/api/v2") == "v2"
    assert lookup("/api/v2x") == "api"
    assert lookup("/api/v2/deep/er") == "v2"
    assert table.lookup("other.example.com", "/") is None
    assert table.has_host("app.example.com") and not table.has_host("other.example.com")


def test_routing_path_resolves_dots_and_escapes() -> None:
    assert routing_path("/a/b") == "/a/b"
    assert routing_path("/a/./b/../c") == "/a/c"
    assert routing_path("/../../etc") == "/etc"
    assert routing_path("//a///b/") == "/a/b/"
    assert routing_path("/%61dmin") == "/admin"
    assert routing_path("/public/%2e%2e/admin") == "/admin"
    assert routing_path("/a/..") == "/"
    assert normalise_location("/api/") == "/api"
    assert normalise_location("/") == "/"
    for bad in ("api", "/a?b", "/a#b"):
        with pytest.raises(ValueError):
            normalise_location(bad)


def test_dot_segments_cannot_dodge_a_protected_location() -> None:
    table = RouteTable()
    table.add(target("public"), ["app.example.com"])
    table.add(target("admin", basic_auth=BasicAuth("a", "b")), ["app.example.com"], ["/admin"])
    for sneaky in ("/public/../admin", "/%61dmin/x", "//admin", "/./admin"):
        assert table.lookup("app.example.com", routing_path(sneaky)).target.service == "admin"  # type: ignore[union-attr]


def test_wildcards_match_any_depth_after_exact_names() -> None:
    table = RouteTable()
    table.add(target("wild"), ["*.example.com"])
    table.add(target("exact"), ["app.example.com"])
    assert table.lookup("app.example.com").target.service == "exact"  # type: ignore[union-attr]
    assert table.lookup("x.example.com").target.service == "wild"  # type: ignore[union-attr]
    assert table.lookup("a.b.example.com").target.service == "wild"  # type: ignore[union-attr]
    assert table.lookup("example.com") is None


def test_conflicts_are_refused_and_change_nothing() -> None:
    table = RouteTable()
    table.add(target("app", owner="alice"), ["app.example.com", "www.example.com"], ["/", "/api"])
    with pytest.raises(RouteConflict, match="another client"):
        table.add(target("evil", owner="mallory"), ["new.example.com", "www.example.com"])
    assert table.lookup("new.example.com") is None  # nothing of the refused add was kept
    with pytest.raises(RouteConflict, match="service 'app'"):
        table.add(target("other", owner="alice"), ["app.example.com"], ["/api"])
    # A different location on the same host is no conflict; the same owner+service replaces.
    table.add(target("docs", owner="mallory"), ["app.example.com"], ["/docs"])
    table.add(target("app", owner="alice", host_rewrite="localhost"), ["app.example.com"])
    route = table.lookup("app.example.com", "/")
    assert route is not None and route.host_rewrite == b"localhost"
    assert table.lookup("www.example.com") is None  # the replacement dropped the old hosts
    assert len(table) == 2
    assert table.remove_owner("alice") == 1
    assert table.remove("mallory", "docs") == 1
    assert len(table) == 0 and table.lookup("app.example.com", "/docs") is None


def test_counters_outlive_a_route() -> None:
    table = RouteTable()
    (route,) = table.add(target("app"), ["app.example.com"])
    route.counters.count_response(200)
    table.remove("c1", "app")
    (again,) = table.add(target("app"), ["app.example.com"])
    assert again.counters.snapshot().responses_2xx == 1


@pytest.mark.parametrize(
    "options",
    [
        {"set_headers": (("Content-Length", "1"),)},
        {"set_headers": (("X-Forwarded-For", "1.2.3.4"),)},
        {"set_headers": (("Bad Name", "x"),)},
        {"set_headers": (("X-Ok", "line\r\nInjected: 1"),)},
        {"remove_headers": ("Host",)},
        {"host_rewrite": "bad host"},
        {"response_timeout_s": 0},
        {"proxy_protocol": "v9"},
    ],
)
def test_route_options_are_validated(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RouteOptions(**options)  # type: ignore[arg-type]


def test_basic_auth_is_validated_and_hides_its_password() -> None:
    auth = BasicAuth("alice", "s3cret")
    assert "s3cret" not in repr(auth) and "s3cret" not in repr(RouteOptions(basic_auth=auth))
    with pytest.raises(ValueError):
        BasicAuth("a:b", "x")
    with pytest.raises(ValueError):
        BasicAuth("a", "")
    with pytest.raises(ValueError):
        BasicAuth("a", "b", realm='say "hi"')
