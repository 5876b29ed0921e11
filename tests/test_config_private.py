"""Config of private services: `public: false` and `visitor_token` (client and server), and the
`visitor:` section `muxtunnel visit` reads."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from muxtunnel.config import (
    ConfigError,
    load_client_config,
    load_server_config,
    load_visitor_config,
)
from muxtunnel.model import Secret, ServiceSpec, VisitSpec

V1, V2 = "visitor-token-000001", "visitor-token-000002"
CLIENT_TOKEN = "client-token-0000001"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_a_private_service_with_one_token_and_with_a_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
client:
  token: {CLIENT_TOKEN}
  services:
    - {{name: ssh, local: 22, public: false, visitor_token: {V1}}}
    - {{name: dns, type: udp, local: 53, public: false, visitor_token: [{V1}, {V2}, {V1}]}}
    - {{name: web, local: 80, public: true}}
""",
    )
    config = load_client_config(path, env={})
    assert config.services == (
        ServiceSpec("ssh", "tcp", "127.0.0.1", 22, private=True, visitor_tokens=(Secret(V1),)),
        ServiceSpec(
            "dns", "udp", "127.0.0.1", 53, private=True, visitor_tokens=(Secret(V1), Secret(V2))
        ),
        ServiceSpec("web", "tcp", "127.0.0.1", 80),
    )
    assert V1 not in repr(config)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (f"{{name: w, local: 80, visitor_token: {V1}}}", "visitor_token is for private services"),
        (
            f"{{name: w, type: http, local: 80, public: false, visitor_token: {V1}}}",
            "cannot be private",
        ),
        (
            f"{{name: w, local: 80, public: false, token: {V1}, visitor_token: {V1}}}",
            "must differ from the service's token",
        ),
        (
            f"{{name: w, local: 80, public: false, visitor_token: {CLIENT_TOKEN}}}",
            "must differ from the token",
        ),
        ("{name: w, local: 80, public: false, visitor_token: []}", "at least one visitor token"),
        ("{name: w, local: 80, public: nope}", "true or false"),
        (
            f"{{name: w, local: 80, remote_port: 8080, public: false, visitor_token: {V1}}}",
            "leave remote_port out",
        ),
    ],
)
def test_private_service_mistakes_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    path = write(tmp_path, f"client:\n  token: {CLIENT_TOKEN}\n  services:\n    - {entry}\n")
    found = error_of(lambda: load_client_config(path, env={}))
    assert message in found
    assert re.match(r".*config\.yaml:\d+: client", found)
    assert CLIENT_TOKEN not in found and V1 not in found


def test_the_servers_own_visitor_tokens(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
server:
  token: {CLIENT_TOKEN}
  services:
    - {{name: ssh, visitor_token: [{V1}, {V2}]}}
""",
    )
    (policy,) = load_server_config(path, env={}).services
    assert policy.visitor_tokens == (Secret(V1), Secret(V2))
    clash = write(
        tmp_path,
        f"server:\n  token: {CLIENT_TOKEN}\n"
        f"  services: [{{name: ssh, visitor_token: {CLIENT_TOKEN}}}]\n",
    )
    assert "must differ" in error_of(lambda: load_server_config(clash, env={}))


def test_the_visitor_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
client:
  server: elsewhere.example:1
visitor:
  server: tunnel.example.com
  token: {V1}
  reconnect_max_s: 10
  services:
    - {{name: ssh, bind: 2222}}
    - {{name: db, bind: "127.0.0.2:5432", token: {V2}, compression: zstd}}
    - {{name: dns, type: udp, bind: "[::1]:5353"}}
    - {{name: any}}
""",
    )
    config = load_visitor_config(path, env={})
    assert (config.server_host, config.server_port, config.reconnect_max_s) == (
        "tunnel.example.com",
        7835,
        10.0,
    )
    assert config.token == Secret(V1) and config.services == ()
    assert config.visits == (
        VisitSpec("ssh", "tcp", "127.0.0.1", 2222),
        VisitSpec("db", "tcp", "127.0.0.2", 5432, Secret(V2), "zstd"),
        VisitSpec("dns", "udp", "::1", 5353),
        VisitSpec("any", "tcp", "127.0.0.1", 0),
    )
    assert config.visits[2].bind == "[::1]:5353"
    assert config.services_without_token() == ()


def test_the_visitor_token_comes_from_its_own_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "visitor:\n  services: [{name: ssh}]\n")
    env = {"MUXTUNNEL_TOKEN": CLIENT_TOKEN}
    assert load_visitor_config(path, env=env).services_without_token() == ("ssh",)
    env["MUXTUNNEL_VISITOR_TOKEN"] = V1
    assert load_visitor_config(path, env=env).token == Secret(V1)
    assert load_client_config(None, env=env).token == Secret(CLIENT_TOKEN)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{bind: 2222}", "missing required key 'name'"),
        ("{name: ssh, type: http}", "expected tcp or udp"),
        ("{name: dns, type: udp, compression: zstd}", "compression is for tcp"),
        ("{name: ssh, bind: true}", "HOST:PORT"),
        ("{name: ssh, local: 22}", "local"),
    ],
)
def test_visitor_section_mistakes(tmp_path: Path, entry: str, message: str) -> None:
    path = write(tmp_path, f"visitor:\n  services:\n    - {entry}\n")
    assert message in error_of(lambda: load_visitor_config(path, env={}))


def test_a_file_without_a_visitor_section_is_refused_for_visit(tmp_path: Path) -> None:
    path = write(tmp_path, "client:\n  server: x\n")
    assert "no 'visitor:' section" in error_of(lambda: load_visitor_config(path, env={}))
