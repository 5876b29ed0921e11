from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mux._config import MuxConfig
from muxtunnel.balance.settings import (
    CircuitSettings,
    HealthSettings,
    PerSourceLimit,
    RateLimit,
    parse_policy,
)
from muxtunnel.config import (
    ConfigError,
    load_client_config,
    load_config,
    load_server_config,
    load_visitor_config,
)
from muxtunnel.model import (
    ClientConfig,
    ClientTls,
    GroupSpec,
    HttpFront,
    HttpOptions,
    PortRanges,
    Secret,
    ServerConfig,
    ServerTls,
    ServicePolicy,
    ServiceSpec,
    VisitSpec,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
EXAMPLE = ROOT / "config.example.yaml"
#: All the example needs: the shared token, and the visitor token `muxtunnel visit` reads anyway
#: for its private service (a service's own token is commented out).
EXAMPLE_ENV = {
    "MUXTUNNEL_TOKEN": "example-token-0123456789",
    "MUXTUNNEL_VISITOR_TOKEN": "db-visitor-0123456789",
}


def config_path(name: str) -> str:
    return str(CONFIGS / name)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the shipped example ---


def test_example_loads_for_the_server() -> None:
    config = load_server_config(EXAMPLE, env=EXAMPLE_ENV)
    assert config.token == Secret("example-token-0123456789")
    assert config.allow_ports == PortRanges(((8000, 8999), (10000, 10100)))
    assert config.services == (
        ServicePolicy("ssh", port=8022, idle_timeout_s=0.0),
        ServicePolicy(
            "shop",
            lb=parse_policy("least_connections"),
            circuit=CircuitSettings(3, 20.0, 15.0),
            rate_limit=RateLimit(200.0, 400),
            per_source=PerSourceLimit(50, 20.0),
        ),
    )
    assert config.http == HttpFront("example.com", "0.0.0.0", 80)


def test_example_loads_for_the_client() -> None:
    config = load_client_config(EXAMPLE, env=EXAMPLE_ENV)
    assert (config.server_host, config.server_port) == ("tunnel.example.com", 7835)
    assert config.token == Secret("example-token-0123456789")
    assert config.services == (
        ServiceSpec("web", "tcp", "127.0.0.1", 3000, 8080),
        ServiceSpec("ssh", "tcp", "127.0.0.1", 22, 8022),
        ServiceSpec("dns", "udp", "::1", 53, 10053),
        ServiceSpec("db", "tcp", "127.0.0.1", 5432, private=True,
                    visitor_tokens=(Secret("db-visitor-0123456789"),)),
        ServiceSpec("app", "http", "127.0.0.1", 3000, http=HttpOptions()),
        ServiceSpec(
            "shop-1",
            "tcp",
            "127.0.0.1",
            8081,
            group=GroupSpec("shop", None, 2, HealthSettings("http", "/healthz", 5.0, 2.0, 3, 2)),
        ),
    )  # fmt: skip


def test_example_loads_for_visit() -> None:
    config = load_visitor_config(EXAMPLE, env=EXAMPLE_ENV)
    assert (config.server_host, config.server_port) == ("tunnel.example.com", 7835)
    assert config.token == Secret("db-visitor-0123456789") and config.services == ()
    assert config.visits == (VisitSpec("db", "tcp", "127.0.0.1", 15432),)


#: Every number the example spells out is the default, so loading it proves nothing about
#: those keys: each is rewritten to another value (old line, new line, where it lands).
EXAMPLE_CHANGES = [
    ("auth_timeout_s: 5", "auth_timeout_s: 7", ("server", "auth_timeout_s", 7.0)),
    ("drain_timeout_s: 10", "drain_timeout_s: 12", ("server", "drain_timeout_s", 12.0)),
    (
        "max_visitors_per_service: 1024",
        "max_visitors_per_service: 512",
        ("server", "max_visitors_per_service", 512),
    ),
    ("auth_failures_burst: 5", "auth_failures_burst: 6", ("server", "auth_failures_burst", 6)),
    (
        "auth_failures_per_min: 5",
        "auth_failures_per_min: 7",
        ("server", "auth_failures_per_min", 7.0),
    ),
    (
        "max_preauth_per_source: 16",
        "max_preauth_per_source: 8",
        ("server", "max_preauth_per_source", 8),
    ),
    (
        "max_preauth_connections: 256",
        "max_preauth_connections: 128",
        ("server", "max_preauth_connections", 128),
    ),
    ("max_streams: 1024", "max_streams: 512", ("server.mux", "max_streams", 512)),
    (
        'session_receive_budget_bytes: "256MiB"',
        'session_receive_budget_bytes: "128MiB"',
        ("server.mux", "session_receive_budget_bytes", 128 << 20),
    ),
    (
        'max_stream_window_bytes: "16MiB"',
        'max_stream_window_bytes: "8MiB"',
        ("server.mux", "max_stream_window_bytes", 8 << 20),
    ),
    # in both sections
    (
        "keepalive_interval_s: 30",
        "keepalive_interval_s: 20",
        ("both.mux", "keepalive_interval_s", 20.0),
    ),
    (
        "keepalive_timeout_s: 10",
        "keepalive_timeout_s: 15",
        ("both.mux", "keepalive_timeout_s", 15.0),
    ),
    ("udp_flow_idle_s: 60", "udp_flow_idle_s: 90", ("both", "udp_flow_idle_s", 90.0)),
    ("udp_max_flows: 1024", "udp_max_flows: 512", ("both", "udp_max_flows", 512)),
    (
        "max_visitors_per_source: 256",
        "max_visitors_per_source: 128",
        ("server", "max_visitors_per_source", 128),
    ),
    (
        "visitor_idle_timeout_s: 300",
        "visitor_idle_timeout_s: 120",
        ("server", "visitor_idle_timeout_s", 120.0),
    ),
    (
        "max_services_per_session: 64",
        "max_services_per_session: 32",
        ("server", "max_services_per_session", 32),
    ),
    (
        "max_sessions_per_source: 16",
        "max_sessions_per_source: 8",
        ("server", "max_sessions_per_source", 8),
    ),
    ("port_reservation_s: 60", "port_reservation_s: 30", ("server", "port_reservation_s", 30.0)),
    (
        "compression_level_max: 3",
        "compression_level_max: 5",
        ("server", "compression_level_max", 5),
    ),
    (
        'compression_budget_bytes: "64MiB"',
        'compression_budget_bytes: "32MiB"',
        ("server", "compression_budget_bytes", 32 << 20),
    ),
    ("reconnect_min_s: 0.5", "reconnect_min_s: 0.75", ("clients", "reconnect_min_s", 0.75)),
    ("reconnect_max_s: 30", "reconnect_max_s: 45", ("clients", "reconnect_max_s", 45.0)),
]


def test_example_keys_are_read_not_defaulted(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new, _ in EXAMPLE_CHANGES:
        assert f"{old}\n" in text, old
        text = text.replace(f"{old}\n", f"{new}\n")
    path = write(tmp_path, text, "example.yaml")
    loaded = {
        "server": load_server_config(path, env=EXAMPLE_ENV),
        "client": load_client_config(path, env=EXAMPLE_ENV),
        "visitor": load_visitor_config(path, env=EXAMPLE_ENV),
    }
    defaults = {"server": ServerConfig(), "client": ClientConfig(), "visitor": ClientConfig()}
    sides = {"both": ("server", "client"), "clients": ("client", "visitor")}
    for _, _, (where, key, value) in EXAMPLE_CHANGES:
        side, _, part = where.partition(".")
        for name in sides.get(side, (side,)):
            config, default = loaded[name], defaults[name]
            if part:
                config, default = config.mux, default.mux
            assert getattr(default, key) != value, (name, key)  # the rewrite left the default
            assert getattr(config, key) == value, (name, key, getattr(config, key))


def test_example_substitution_defaults_can_be_overridden_by_env() -> None:
    env = {**EXAMPLE_ENV, "MUXTUNNEL_BIND": "127.0.0.1:9999", "MUXTUNNEL_SERVER": "[::1]:1"}
    server = load_server_config(EXAMPLE, env=env)
    assert (server.bind_host, server.bind_port) == ("127.0.0.1", 9999)
    client = load_client_config(EXAMPLE, env=env)
    assert (client.server_host, client.server_port) == ("::1", 1)


def test_example_needs_its_token_from_the_environment_and_nothing_else() -> None:
    message = error_of(lambda: load_client_config(EXAMPLE, env={}))
    missing = re.search(r"environment variable (\w+) is not set", message)
    assert missing is not None and missing[1] in EXAMPLE_ENV, message
    text = EXAMPLE.read_text(encoding="utf-8")
    used = set(re.findall(r"^[^#]*\$\{(\w+)\}", text, re.MULTILINE))  # no default, not a comment
    assert used == set(EXAMPLE_ENV), used


# --- valid files ---


#: A state directory of its own, and the TLS defaults the loader derives from it.
STATE_ENV = {"XDG_STATE_HOME": "/state"}
SERVER_TLS = ServerTls(
    "/state/muxtunnel/server.crt", "/state/muxtunnel/server.key", self_signed=True
)
CLIENT_TLS = ClientTls(known_hosts="/state/muxtunnel/known_hosts")


def test_full_server_config() -> None:
    config = load_server_config(config_path("valid/server.yaml"), env=STATE_ENV)
    assert config == ServerConfig(
        bind_host="::",
        bind_port=9000,
        public_host="::",
        token=Secret("default-token-0123456789"),
        services=(
            ServicePolicy("web", Secret("web-token-0123456789")),
            ServicePolicy("metrics", None),
        ),
        allow_ports=PortRanges(((8000, 8100), (9443, 9443))),
        mux=MuxConfig(
            max_streams=64,
            session_receive_budget_bytes=64 * 1024 * 1024,
            keepalive_interval_s=1.5,
            enable_keepalive=False,
        ),
        auth_timeout_s=2.5,
        drain_timeout_s=0.0,
        max_visitors_per_service=10,
        udp_flow_idle_s=30.0,
        udp_max_flows=100,
        auth_failures_burst=3,
        auth_failures_per_min=0.5,
        tls=SERVER_TLS,
    )


def test_full_client_config() -> None:
    config = load_client_config(config_path("valid/client.yaml"), env=STATE_ENV)
    assert config == ClientConfig(
        server_host="tunnel.example.com",
        server_port=7835,
        token=Secret("client-token-0123456789"),
        services=(
            ServiceSpec("tcp-3000", "tcp", "127.0.0.1", 3000, 0),
            ServiceSpec("db", "tcp", "10.0.0.5", 5432, 15432, Secret("db-token-0123456789")),
            ServiceSpec("dns", "udp", "::1", 53, 0),
        ),
        mux=MuxConfig(keepalive_timeout_s=5),
        reconnect_min_s=1.0,
        reconnect_max_s=60.0,
        tls=CLIENT_TLS,
    )


def test_tokens_never_show_in_repr() -> None:
    config = load_client_config(config_path("valid/client.yaml"), env={})
    assert "0123456789" not in repr(config)


def test_empty_sections_give_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\nclient: {}\n")
    # TLS is the loader's default: the server's own pair, trust on first use.
    assert load_server_config(path, env=STATE_ENV) == ServerConfig(tls=SERVER_TLS)
    assert load_client_config(path, env=STATE_ENV) == ClientConfig(tls=CLIENT_TLS)


def test_no_file_at_all_uses_overrides_and_defaults() -> None:
    config = load_server_config(None, {"bind": "127.0.0.1:9000"}, env={})
    assert (config.bind_host, config.bind_port, config.public_host) == (
        "127.0.0.1",
        9000,
        "127.0.0.1",
    )
    assert config.token is None


def test_missing_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {}\n")
    assert error_of(lambda: load_client_config(path, env={})) == f"{path}: no 'client:' section"
    empty = write(tmp_path, "", "empty.yaml")
    assert "no 'server:' section" in error_of(lambda: load_server_config(empty, env={}))


def test_only_the_loaded_section_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  bogus: 1\n  token: ${UNSET}\nclient:\n  server: a.b\n")
    assert load_client_config(path, env={}).server_host == "a.b"


# --- bad files: the message names file, line and key path ---


@pytest.mark.parametrize(
    ("name", "line", "key_path", "what"),
    [
        ("invalid/unknown_key.yaml", 6, "client.services[0].remote-port",
         "unknown key 'remote-port'; did you mean 'remote_port'?"),
        ("invalid/wrong_type.yaml", 10, "client.services[1].remote_port",
         "expected an integer, got 'abc'"),
        ("invalid/missing_value.yaml", 3, "client.services[0]", "missing required key 'local'"),
        ("invalid/empty_token.yaml", 2, "client.token", "the token must not be empty"),
    ],
)  # fmt: skip
def test_bad_config_message(name: str, line: int, key_path: str, what: str) -> None:
    path = config_path(name)
    message = error_of(lambda: load_client_config(path, env={}))
    assert message == f"{path}:{line}: {key_path}: {what}"


def test_malformed_yaml_is_one_line_with_file_and_line() -> None:
    path = config_path("invalid/malformed.yaml")
    message = error_of(lambda: load_client_config(path, env={}))
    assert re.fullmatch(rf"{re.escape(path)}:5: invalid YAML \(column 6\): .+", message), message


def test_missing_env_var_names_file_line_path_and_variable() -> None:
    path = config_path("invalid/env_missing.yaml")
    message = error_of(lambda: load_server_config(path, env={}))
    assert message.startswith(f"{path}:5: server.services[0].token: ")
    assert "environment variable MUXTUNNEL_TEST_UNSET_VAR is not set" in message


def test_secret_of_wrong_type_is_not_printed() -> None:
    path = config_path("invalid/secret_wrong_type.yaml")
    message = error_of(lambda: load_server_config(path, env={}))
    assert message.startswith(f"{path}:2: server.token: expected a token string")
    assert "<secret>" in message and "123456789012345" not in message


@pytest.mark.parametrize(
    ("text", "line", "key_path", "what"),
    [
        ("client:\n  servr: x\n", 2, "client.servr", "did you mean 'server'?"),
        ("clinet:\n  server: x\n", 1, "clinet", "did you mean 'client'?"),
        ("client:\n  server: x\n  server: y\n", 3, "client", "duplicate key 'server'"),
        ("client:\n  server: 5\n", 2, "client.server", "expected a string, got 5"),
        ("client:\n  server: 'host:99999'\n", 2, "client.server", "between 1 and 65535"),
        ("client:\n  services: web\n", 2, "client.services", "expected a list, got 'web'"),
        ("client:\n  services:\n    - 3000\n", 3, "client.services[0]",
         "expected a mapping, got '3000'"),
        ("client:\n  services:\n    -\n", 3, "client.services[0]", "expected a mapping, got null"),
        ("client:\n  services:\n    - local: [1]\n", 3, "client.services[0].local",
         "expected HOST:PORT or a port, got a list"),
        ("client:\n  services:\n    - {local: 1, type: sctp}\n", 3, "client.services[0].type",
         "expected one of tcp, udp, http, https, got 'sctp'"),
        ("client:\n  services:\n    - {local: 1, name: 'a b'}\n", 3, "client.services[0].name",
         "may hold only"),
        ("client:\n  services:\n    - {local: 1, remote_port: 70000}\n", 3,
         "client.services[0].remote_port", "must be between 0 and 65535, got 70000"),
        ("client:\n  services:\n    - {local: 1, remote_port: '80'}\n", 3,
         "client.services[0].remote_port", "got '80' (a quoted string; remove the quotes)"),
        ("client:\n  services:\n    - {local: 3000}\n    - {local: 'localhost:3000'}\n", 4,
         "client.services[1]", "duplicate service name 'tcp-3000' (first at"),
        ("client:\n  reconnect_min_s: 0\n", 2, "client.reconnect_min_s",
         "must be greater than 0, got 0"),
        ("client:\n  reconnect_min_s: .nan\n", 2, "client.reconnect_min_s", "greater than 0"),
        ("client:\n  reconnect_min_s: true\n", 2, "client.reconnect_min_s",
         "expected a number, got true"),
        ("client:\n  reconnect_min_s: 5\n  reconnect_max_s: 1\n", 3, "client.reconnect_max_s",
         "must not be less than reconnect_min_s"),
        ("client:\n  udp_max_flows: 0\n", 2, "client.udp_max_flows", "must be at least 1, got 0"),
        ("client:\n  mux:\n    max_stream: 1\n", 3, "client.mux.max_stream",
         "did you mean 'max_streams'?"),
        ("client:\n  mux:\n    enable_keepalive: 1\n", 3, "client.mux.enable_keepalive",
         "expected true or false, got 1"),
        ("client:\n  mux:\n    max_frame_bytes: 2GiB\n", 2, "client.mux",
         "max_frame_bytes must not exceed max_data_frame_bytes"),
        ("client:\n  mux:\n    read_size_bytes: lots\n", 3, "client.mux.read_size_bytes",
         "expected a size in bytes"),
        ("client:\n  mux: 5\n", 2, "client.mux", "expected a mapping, got '5'"),
        ("client:\n  token: !!int abc\n", 2, "client.token", "cannot read this value as int"),
        ("client:\n  token: 12\n", 2, "client.token", "got <secret>"),
        ("client:\n  1: x\n", 2, "client", "keys must be plain strings"),
        ("client: &a\n  server: x\nserver:\n  <<: *a\n", 4, "server",
         "merge keys (<<) must be plain strings"),
        ("- client\n", 1, "", "the file must hold a mapping"),
    ],
)  # fmt: skip
def test_bad_client_values(tmp_path: Path, text: str, line: int, key_path: str, what: str) -> None:
    path = write(tmp_path, text)
    role = "server" if "server:\n  <<" in text else "client"
    message = error_of(lambda: load_config(path, role, env={}))  # type: ignore[call-overload]
    prefix = f"{path}:{line}: {key_path}: " if key_path else f"{path}:{line}: "
    assert message.startswith(prefix), message
    assert what in message, message


@pytest.mark.parametrize(
    ("text", "line", "key_path", "what"),
    [
        ("server:\n  bind: '::1:7835'\n", 2, "server.bind", "brackets"),
        ("server:\n  public_host: 'bad host'\n", 2, "server.public_host", "not a valid host"),
        ("server:\n  allow_ports: '100-50'\n", 2, "server.allow_ports", "backwards"),
        ("server:\n  allow_ports: []\n", 2, "server.allow_ports", "is empty"),
        ("server:\n  allow_ports: [80, {a: 1}]\n", 2, "server.allow_ports[1]",
         "expected a port list"),
        ("server:\n  services:\n    - token: abc\n", 3, "server.services[0]",
         "missing required key 'name'"),
        ("server:\n  services:\n    - {name: a, tokn: x}\n", 3, "server.services[0].tokn",
         "did you mean 'token'?"),
        ("server:\n  services:\n    - {name: a}\n    - {name: a}\n", 4, "server.services[1].name",
         "duplicate service name 'a'"),
        ("server:\n  drain_timeout_s: -1\n", 2, "server.drain_timeout_s", "at least 0"),
        ("server:\n  auth_timeout_s: 0\n", 2, "server.auth_timeout_s", "greater than 0"),
        ("server:\n  max_visitors_per_service: 1.5\n", 2, "server.max_visitors_per_service",
         "expected an integer, got 1.5"),
    ],
)  # fmt: skip
def test_bad_server_values(tmp_path: Path, text: str, line: int, key_path: str, what: str) -> None:
    path = write(tmp_path, text)
    message = error_of(lambda: load_server_config(path, env={}))
    assert message.startswith(f"{path}:{line}: {key_path}: "), message
    assert what in message, message


def test_unreadable_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert error_of(lambda: load_server_config(missing, env={})).startswith(
        f"{missing}: cannot read"
    )
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"server:\n  bind: \xff\xfe\n")
    assert error_of(lambda: load_server_config(str(binary), env={})) == f"{binary}: not UTF-8 text"


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert "more than 100000 values" in error_of(lambda: load_server_config(path, env={}))


# --- includes ---


def test_include_merges_globs_in_order_and_the_includer_wins() -> None:
    config = load_client_config(config_path("include/main.yaml"), env={})
    assert (config.server_host, config.server_port) == ("main.example.com", 7000)
    assert config.token == Secret("base-token-0123456789")
    assert config.reconnect_max_s == 20.0  # conf.d/10-web.yaml comes after base.yaml
    assert [s.name for s in config.services] == ["base-svc", "web", "db", "main-svc"]
    assert config.mux.max_streams == 32
    assert load_server_config(config_path("include/main.yaml"), env={}).token is not None


def test_error_in_an_included_file_names_that_file() -> None:
    main = config_path("include/includes_bad.yaml")
    message = error_of(lambda: load_client_config(main, env={}))
    included = os.path.join(os.path.dirname(main), "bad-service.yaml")
    assert (
        message == f"{included}:7: client.services[1].remote_port: expected an integer, got 'abc'"
    )


def test_missing_include_names_the_include_line() -> None:
    path = config_path("include/missing.yaml")
    message = error_of(lambda: load_client_config(path, env={}))
    assert message.startswith(f"{path}:2: include[0]: no such file: ")


def test_include_cycle_is_detected() -> None:
    path = config_path("cycle/a.yaml")
    message = error_of(lambda: load_client_config(path, env={}))
    b = os.path.join(os.path.dirname(path), "b.yaml")
    assert message.startswith(f"{b}:3: include: include cycle: "), message


def test_glob_matching_nothing_is_fine_and_null_does_not_erase(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("client:\n  server: base.example\n")
    path = write(tmp_path, "include: [base.yaml, 'none/*.yaml']\nclient:\n  server:\n")
    assert load_client_config(path, env={}).server_host == "base.example"


def test_duplicate_service_across_includes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("client:\n  services:\n    - {name: web, local: 1}\n")
    path = write(tmp_path, "include: a.yaml\nclient:\n  services:\n    - {name: web, local: 2}\n")
    message = error_of(lambda: load_client_config(path, env={}))
    assert message.startswith(f"{path}:4: client.services[0].name: duplicate service name 'web'")
    assert f"first at {tmp_path / 'a.yaml'}:3" in message


def test_include_patterns_use_substitution(tmp_path: Path) -> None:
    (tmp_path / "prod.yaml").write_text("client:\n  server: prod.example\n")
    path = write(tmp_path, "include: '${ENVIRONMENT}.yaml'\nclient: {}\n")
    assert load_client_config(path, env={"ENVIRONMENT": "prod"}).server_host == "prod.example"


# --- ${VAR} substitution ---


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("'${HOST}:80'", {"HOST": "h.example"}, ("h.example", 80)),
        ("'${HOST:-d.example}:81'", {}, ("d.example", 81)),
        ("'${HOST:-d.example}:81'", {"HOST": ""}, ("d.example", 81)),
        ("'${HOST:-d.example}'", {"HOST": "set.example"}, ("set.example", 7835)),
        ("'${A}${B}'", {"A": "ab", "B": "cd.example"}, ("abcd.example", 7835)),
        ("${ADDR}", {"ADDR": "[::1]:9"}, ("::1", 9)),
    ],
)
def test_substitution_in_strings(
    tmp_path: Path, value: str, env: dict[str, str], expected: tuple[str, int]
) -> None:
    path = write(tmp_path, f"client:\n  server: {value}\n")
    config = load_client_config(path, env=env)
    assert (config.server_host, config.server_port) == expected


def test_unquoted_substitution_can_be_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, "client:\n  services:\n    - local: 1\n      remote_port: ${PORT}\n")
    assert load_client_config(path, env={"PORT": "8080"}).services[0].remote_port == 8080
    quoted = write(tmp_path, "client:\n  udp_max_flows: '${N}'\n", "quoted.yaml")
    assert "remove the quotes" in error_of(lambda: load_client_config(quoted, env={"N": "5"}))


def test_dollar_escape_and_plain_dollars(tmp_path: Path) -> None:
    path = write(tmp_path, "client:\n  token: 'pa$$word$${NOT_A_VAR}$x'\n")
    assert load_client_config(path, env={}).token == Secret("pa$$word${NOT_A_VAR}$x")


@pytest.mark.parametrize("value", ["${T:-}", "'${T:-}'"])
def test_substitution_to_nothing_is_an_empty_string_not_absent(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"client:\n  token: {value}\n")
    message = error_of(lambda: load_client_config(path, env={"MUXTUNNEL_TOKEN": "env"}))
    assert message == f"{path}:2: client.token: the token must not be empty"
    path = write(tmp_path, "client:\n  server: ${S:-}\n")
    assert "address must not be empty" in error_of(lambda: load_client_config(path, env={}))


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("'${UNSET}'", "environment variable UNSET is not set"),
        ("'${UNCLOSED'", "unclosed '${'"),
        ("'${1BAD}'", "bad substitution '${1BAD}'"),
        ("'${A:-${B}}'", "bad substitution"),
        ("'${}'", "bad substitution"),
    ],
)
def test_substitution_errors(tmp_path: Path, value: str, what: str) -> None:
    path = write(tmp_path, f"client:\n  server: x\n  token: {value}\n")
    message = error_of(lambda: load_client_config(path, env={}))
    assert message.startswith(f"{path}:3: client.token: "), message
    assert what in message


# --- overrides and the environment token ---


def test_overrides_win_over_the_file() -> None:
    path = config_path("valid/server.yaml")
    config = load_server_config(
        path,
        {
            "bind": "127.0.0.1:7000",
            "token": "flag-token-0123456789",
            "allow_ports": "9000-9100",
            "public_host": None,  # not given on the command line
            "udp_max_flows": 5,
            "mux": MuxConfig(max_streams=8),
        },
        env={"MUXTUNNEL_TOKEN": "env-token-0123456789"},
    )
    assert (config.bind_host, config.bind_port, config.public_host) == (
        "127.0.0.1",
        7000,
        "127.0.0.1",
    )
    assert config.token == Secret("flag-token-0123456789")
    assert config.allow_ports == PortRanges(((9000, 9100),))
    assert config.udp_max_flows == 5 and config.mux == MuxConfig(max_streams=8)
    assert config.auth_timeout_s == 2.5  # untouched file value


def test_client_services_from_the_command_line_replace_the_file_list() -> None:
    specs = [ServiceSpec("api", "tcp", "127.0.0.1", 8000), ServiceSpec("dns", "udp", "::1", 53)]
    config = load_client_config(
        config_path("valid/client.yaml"), {"server": "[::1]:7000", "services": specs}, env={}
    )
    assert (config.server_host, config.server_port) == ("::1", 7000)
    assert config.services == tuple(specs)


def test_override_errors_name_the_command_line() -> None:
    message = error_of(lambda: load_server_config(None, {"bind": "nope:port"}, env={}))
    assert message == "command line: bind: port must be a number, got 'port'"
    assert "must not be empty" in error_of(lambda: load_client_config(None, {"token": ""}, env={}))
    twice = [ServiceSpec("tcp-1", "tcp", "127.0.0.1", 1), ServiceSpec("tcp-1", "tcp", "h", 1)]
    message = error_of(lambda: load_client_config(None, {"services": twice}, env={}))
    assert (
        message
        == "command line: services: duplicate service name 'tcp-1' (first at command line:0)"
    )


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_server_config(None, {"server": "x"}, env={})
    with pytest.raises(TypeError):
        load_client_config(None, {"services": ["3000"]}, env={})


def test_env_token_applies_only_when_nothing_else_sets_one(tmp_path: Path) -> None:
    env = {"MUXTUNNEL_TOKEN": "env-token-0123456789"}
    assert load_client_config(None, env=env).token == Secret("env-token-0123456789")
    flag = Secret("flag-token-0123456789")
    assert load_client_config(None, {"token": flag}, env=env).token == flag
    path = write(tmp_path, "client:\n  token: file-token-0123456789\n")
    assert load_client_config(path, env=env).token == Secret("file-token-0123456789")
    assert load_client_config(None, env={"MUXTUNNEL_TOKEN": ""}).token is None
    assert load_server_config(None, env=env).token == Secret("env-token-0123456789")


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MUXTUNNEL_TEST_HOST", "from-environ.example")
    path = write(tmp_path, "client:\n  server: ${MUXTUNNEL_TEST_HOST}\n")
    assert load_client_config(path).server_host == "from-environ.example"


def test_client_drain_timeout_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, "client:\n  drain_timeout_s: 2.5\n  services: [{local: 3000}]\n")
    assert load_client_config(path).drain_timeout_s == 2.5
    assert load_client_config(None).drain_timeout_s == ClientConfig().drain_timeout_s
    bad = write(tmp_path, "client:\n  drain_timeout_s: -1\n", "bad.yaml")
    assert "client.drain_timeout_s: must be at least 0" in error_of(lambda: load_client_config(bad))


@pytest.mark.parametrize(
    ("text", "line", "column", "what"),
    [
        ("client:\n  server: a:1\n  services:\n    - [1, 2\n", 4, 7, "the '[' opened here"),
        ("client:\n  server: {host: a\n  token: b\n", 2, 11, "the '{' opened here"),
        ('client:\n  server: "a:1\n\n  token: b\n', 2, 11, "the quoted string that starts here"),
    ],
)  # fmt: skip
def test_an_unclosed_yaml_construct_points_where_it_started(
    tmp_path: Path, text: str, line: int, column: int, what: str
) -> None:
    path = tmp_path / "unclosed.yaml"
    path.write_text(text)
    message = error_of(lambda: load_client_config(str(path), env={}))
    assert message.startswith(f"{path}:{line}: invalid YAML (column {column}): {what} is not "
                              "closed ("), message  # fmt: skip
    assert "at line " in message and message.count("\n") == 0, message


def test_tls_without_a_state_directory_names_every_flag_that_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, "client:\n  server: a:1\n  token: some-long-token-0123\n")
    message = error_of(lambda: load_client_config(path, env={}))
    for flag in ("--state-dir", "--server-fingerprint", "--tls-ca"):
        assert flag in message, message
