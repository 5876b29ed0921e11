"""The web keys of the config, the command line and the control protocol: http/https services,
their options, the server's web ports and its custom domain policy, and what a reload makes of
them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from muxtunnel import control
from muxtunnel.cli import _client_overrides, _load_server, build_parser
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.model import (
    BasicAuthSpec,
    ClientConfig,
    HttpFront,
    HttpOptions,
    HttpsFront,
    Secret,
    ServerConfig,
    ServiceSpec,
)
from muxtunnel.reload import diff_services, server_changes
from muxtunnel.server._web import domain_allowed
from muxtunnel.specs import SpecError, parse_service_spec

TOKEN = "0123456789abcdef0123456789"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_server_web_ports_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  token: t-0123456789abcdef\n"
        "  http:\n    bind: '127.0.0.1:8080'\n    domain: Example.COM.\n"
        "    custom_domains: ['*.example.org', www.example.net]\n    head_timeout_s: 3\n"
        "    offline_grace_s: 0\n  https:\n    bind: 8443\n"
        "  services:\n    - {name: app, custom_domains: ['*']}\n",
    )
    config = load_server_config(path, env={})
    assert config.http == HttpFront(
        domain="example.com", bind_host="127.0.0.1", bind_port=8080,
        custom_domains=("*.example.org", "www.example.net"), head_timeout_s=3.0,
        offline_grace_s=0.0,
    )  # fmt: skip
    assert config.https == HttpsFront("0.0.0.0", 8443)
    assert config.services[0].custom_domains == ("*",)


def test_listen_flags_make_the_web_ports() -> None:
    flags = ["--http-bind", "0.0.0.0:80", "--domain", "example.com", "--https-bind", ":443"]
    args = build_parser().parse_args(["listen", "--token", TOKEN, *flags])
    config = _load_server(args)
    assert config.http == HttpFront("example.com", "0.0.0.0", 80)
    assert config.https == HttpsFront("0.0.0.0", 443)
    # A domain alone: the HTTPS port only, or none yet.
    args = build_parser().parse_args(["listen", "--token", TOKEN, "--domain", "example.com"])
    assert _load_server(args).http == HttpFront("example.com", None)


def test_client_web_services_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "client:\n  token: t-0123456789abcdef\n  services:\n"
        "    - name: App\n      type: http\n      local: 3000\n      subdomain: Www\n"
        "      custom_domains: [shop.example.net]\n      locations: [/, /api/]\n"
        "      host_rewrite: 'localhost:3000'\n"
        "      request_headers: {set: {X-From: tunnel}, remove: [X-Debug]}\n"
        "      basic_auth: {user: bob, password: hunter2}\n      response_timeout_s: 5\n"
        "      proxy_protocol: v1\n      compression: zstd\n"
        "    - {name: tls, type: https, local: 8443, proxy_protocol: v2}\n"
        "    - {name: db, local: 5432, proxy_protocol: v2}\n",
    )
    app, tls, db = load_client_config(path, env={}).services
    assert app.type == "http" and app.proxy_protocol == "v1" and app.compression == "zstd"
    assert app.http == HttpOptions(
        subdomain="www", custom_domains=("shop.example.net",), locations=("/", "/api"),
        host_rewrite="localhost:3000", set_headers=(("X-From", "tunnel"),),
        remove_headers=("X-Debug",), basic_auth=BasicAuthSpec("bob", Secret("hunter2")),
        response_timeout_s=5.0,
    )  # fmt: skip
    assert "hunter2" not in repr(app)
    assert tls.http == HttpOptions() and tls.proxy_protocol == "v2"
    assert db.http is None and db.proxy_protocol == "v2"


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ("{type: http, local: 1, remote_port: 80}", "has no port of its own"),
        ("{type: https, local: 1, locations: [/a]}", "TLS passthrough cannot see requests"),
        ("{type: tcp, local: 1, subdomain: a}", "subdomain is for http and https services"),
        ("{type: udp, local: 1, proxy_protocol: v1}", "proxy_protocol is for tcp, http"),
        ("{type: http, local: 1, proxy_protocol: v3}", "expected 'v1', 'v2' or 'none'"),
        ("{type: http, local: 1, subdomain: a.b}", "is not a subdomain"),
        ("{name: my.app, type: http, local: 1}", "cannot be its subdomain"),
        ("{type: http, local: 1, locations: [api]}", "must start with '/'"),
        ("{type: http, local: 1, custom_domains: ['bad name']}", "invalid character"),
        ("{type: http, local: 1, request_headers: {set: {Host: x}}}", "managed by the proxy"),
        ("{type: http, local: 1, basic_auth: {user: bob}}", "needs both 'user' and 'password'"),
        ("{type: http, local: 1, basic_auth: {user: 'a:b', password: c}}", "cannot contain ':'"),
        ("{type: http, local: 1, response_timeout_s: 0}", "greater than 0"),
        ("{type: http, local: 1, custom_domains: [" + ", ".join(f"d{i}.example.net" for i in range(40)) + "]}",  # noqa: E501
         "cannot be registered"),
    ],
)  # fmt: skip
def test_bad_web_services_are_refused_at_load(tmp_path: Path, entry: str, what: str) -> None:
    path = write(tmp_path, f"client:\n  token: t-0123456789abcdef\n  services:\n    - {entry}\n")
    with pytest.raises(ConfigError, match=f"{path}:4: client.services\\[0\\]") as info:
        load_client_config(path, env={})
    assert what in str(info.value)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("server:\n  http:\n    bind: 80\n", "need a domain"),
        ("server:\n  https:\n    bind: 443\n", "needs a domain"),
        ("server:\n  http:\n    domain: '*.example.com'\n", "plain name"),
        ("server:\n  http:\n    domain: x.com\n    custom_domains: ['a b']\n", "invalid"),
        ("server:\n  http: {domain: x.com}\n  https: {cert: a.pem}\n", "both 'cert' and 'key'"),
        ("server:\n  http: {domain: x.com, max_header_count: 0}\n", "at least 1"),
    ],
)
def test_bad_web_ports_are_refused_at_load(tmp_path: Path, text: str, what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_server_config(path, env={})
    assert what in str(info.value)


def test_up_flags_for_web_services() -> None:
    args = build_parser().parse_args(
        ["up", "--http", "app=3000", "--https", "secure=[::1]:8443", "--http", "localhost:8080"]
    )
    specs = _client_overrides(args)["services"]
    assert [(s.name, s.type, s.local) for s in specs] == [  # type: ignore[attr-defined]
        ("app", "http", "127.0.0.1:3000"),
        ("http-8080", "http", "localhost:8080"),
        ("secure", "https", "[::1]:8443"),
    ]
    with pytest.raises(SpecError, match="takes no remote port"):
        parse_service_spec("app=3000:80", "http")
    with pytest.raises(SpecError, match="one DNS label"):
        parse_service_spec("my.app=3000", "http")


def test_register_carries_the_web_options_and_only_when_used() -> None:
    spec = ServiceSpec(
        "app", "http", "127.0.0.1", 3000,
        http=HttpOptions(
            subdomain="www", custom_domains=("a.example.net",), locations=("/api",),
            host_rewrite="localhost", set_headers=(("X-A", "1"),), remove_headers=("X-B",),
            basic_auth=BasicAuthSpec("bob", Secret("pw")), response_timeout_s=2.5,
        ),
        proxy_protocol="v2",
    )  # fmt: skip
    request = control.Register.of(spec, bytes(32), 0)
    decoded = control.decode_message(control.encode_message(request)[2:])
    assert decoded == request
    assert isinstance(decoded, control.Register) and decoded.basic_auth == ("bob", "pw")
    assert "pw" not in repr(decoded)
    # A tcp service that uses no new option sends what older versions sent, byte for byte.
    plain = control.Register.of(ServiceSpec("db", "tcp", "127.0.0.1", 1), bytes(32), 9000)
    assert set(plain.to_wire()) == {"kind", "service", "type", "remote_port", "tag"}
    registered = control.Registered("app", "http", "0.0.0.0", 80, bytes(32), None, ("http://x",))
    assert control.decode_message(control.encode_message(registered)[2:]) == registered


@pytest.mark.parametrize(
    "change",
    [
        {"custom_domains": ["x"] * 33},
        {"set_headers": [["a"]]},
        {"basic_auth": ["user"]},
        {"proxy_protocol": "v9"},
        {"response_timeout_s": -1},
        {"locations": "/"},
    ],
)
def test_malformed_web_options_are_control_errors(change: dict[str, object]) -> None:
    wire = control.Register("app", "http", 0, bytes(32)).to_wire() | change
    with pytest.raises(control.ControlError):
        control.Register.from_wire(wire)


def test_domain_policy_patterns() -> None:
    assert domain_allowed("a.example.org", ("*.example.org",))
    assert domain_allowed("*.b.example.org", ("*.example.org",))
    assert not domain_allowed("example.org", ("*.example.org",))
    assert not domain_allowed("evil-example.org", ("*.example.org",))
    assert domain_allowed("anything.test", ("*",))
    assert domain_allowed("www.example.net", ("www.example.net",))
    assert not domain_allowed("www.example.net", ())


def test_reload_re_registers_a_web_service_whose_options_changed() -> None:
    base = ServiceSpec("app", "http", "127.0.0.1", 3000, http=HttpOptions())
    old = ClientConfig(token=Secret("t"), services=(base,))
    changed = dataclasses.replace(base, http=HttpOptions(locations=("/api",)))
    moved = dataclasses.replace(base, local_port=3001)
    assert diff_services(old, dataclasses.replace(old, services=(changed,))).changed == (changed,)
    assert diff_services(old, dataclasses.replace(old, services=(moved,))).local_only == (moved,)
    pp = dataclasses.replace(base, proxy_protocol="v1")
    assert diff_services(old, dataclasses.replace(old, services=(pp,))).changed == (pp,)


def test_reload_keeps_web_binds_and_takes_the_rest() -> None:
    old = ServerConfig(
        token=Secret("t"),
        http=HttpFront("example.com", "0.0.0.0", 80),
        https=HttpsFront("0.0.0.0", 443),
    )
    new = dataclasses.replace(
        old,
        http=HttpFront("other.com", "0.0.0.0", 8080, head_timeout_s=3.0, custom_domains=("*",)),
        https=HttpsFront("0.0.0.0", 8443, cert="c.pem", key="k.pem"),
    )
    kept = server_changes(old, new).config
    assert kept.http == HttpFront(
        "example.com", "0.0.0.0", 80, head_timeout_s=3.0, custom_domains=("*",)
    )
    assert kept.https == HttpsFront("0.0.0.0", 443, cert="c.pem", key="k.pem")
    off = server_changes(old, dataclasses.replace(old, http=None, https=None)).config
    assert off.http == old.http and off.https == old.https
    # A web service on port 80 is no reason to close it, whatever allow_ports says.
    assert server_changes(old, old).close_reason("app", 80, "http") is None
    assert server_changes(old, old).close_reason("db", 80, "tcp") is not None


def test_status_document_of_web_services() -> None:
    from muxtunnel.status import ServerStatus, ServiceRow, WebRow
    from muxtunnel.web.metrics import StatusCollector, render

    service = ServiceRow(
        "app", "http", "http://app.example.com", 1, 3, 10, 20,
        urls=("http://app.example.com", "https://app.example.com"),
        responses={"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 0},
    )  # fmt: skip
    web = WebRow("example.com", "0.0.0.0:80", None, False, 7, {"unknown_host": 2})
    status = ServerStatus("1", "0.0.0.0:7835", None, 1.0, 0, (), (service,), web=web)
    document = status.to_dict()
    assert document["web"] == {
        "domain": "example.com", "http": "0.0.0.0:80", "https": None, "terminates_tls": False,
        "connections_total": 7, "refusals": {"unknown_host": 2}, "internal_errors": 0,
    }  # fmt: skip
    assert document["services"][0]["urls"][1] == "https://app.example.com"
    assert document["services"][0]["responses"]["2xx"] == 3
    text = render(StatusCollector(lambda: status)).decode()
    assert 'muxtunnel_http_refusals_total{reason="unknown_host",service=""} 2.0' in text
    assert "muxtunnel_http_connections_total 7.0" in text
