"""The load-balancing keys: client `group`/`group_token`/`weight`/`health`, server `lb`,
`rate_limit`, `per_source`, `circuit`, `group_token`; `up --group`; what a reload makes of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from muxtunnel.balance.settings import (
    CircuitSettings,
    HealthSettings,
    PerSourceLimit,
    PolicyKind,
    RateLimit,
)
from muxtunnel.cli import _load_client, build_parser
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.model import ClientConfig, GroupSpec, Secret, ServiceSpec
from muxtunnel.reload import diff_services
from muxtunnel.specs import SpecError

TOKEN = "token-0123456789abcdef"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_server_policy_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n"
        "  services:\n"
        "    - name: web\n"
        "      group_token: ${GT}\n"
        "      lb: 'hash_header: X-User'\n"
        "      rate_limit: {new_per_s: 50, burst: 10}\n"
        "      per_source: {max_connections: 4, new_per_s: 2.5}\n"
        "      circuit: {failures: 3, window_s: 5, cooldown_s: 2}\n"
        "    - {name: plain}\n",
    )
    web, plain = load_server_config(path, env={"GT": "group-secret-0123"}).services
    assert web.group_token == Secret("group-secret-0123")
    assert (web.lb.kind, web.lb.header) == (PolicyKind.HASH_HEADER, "x-user")
    assert web.rate_limit == RateLimit(50, 10)
    assert web.per_source == PerSourceLimit(4, 2.5)
    assert web.circuit == CircuitSettings(3, 5.0, 2.0)
    assert web.circuit.max_cooldown_s == 20.0  # ten times the cooldown, as the engine says
    assert plain.lb.kind is PolicyKind.ROUND_ROBIN and plain.circuit == CircuitSettings()
    assert plain.rate_limit is None and plain.per_source is None and plain.group_token is None
    assert "group-secret" not in repr(web)


def test_client_group_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "client:\n"
        "  services:\n"
        "    - name: web-a\n"
        "      local: 8001\n"
        "      group: web\n"
        "      group_token: group-secret-0123\n"
        "      weight: 3\n"
        "      health: {type: http, path: /healthz, interval_s: 2, timeout_s: 0.5,"
        " unhealthy_after: 4, healthy_after: 1}\n"
        "    - {local: 8002, group: web, weight: 0}\n"
        "    - {local: 8003}\n",
    )
    a, b, c = load_client_config(path, env={}).services
    assert a.group == GroupSpec(
        "web", Secret("group-secret-0123"), 3, HealthSettings("http", "/healthz", 2.0, 0.5, 4, 1)
    )
    assert b.group == GroupSpec("web", None, 0, None)
    assert c.group is None


@pytest.mark.parametrize(
    ("entry", "key_path", "what"),
    [
        ("{local: 1, weight: 2}", "weight", "set 'group' too"),
        ("{local: 1, group_token: abc}", "group_token", "set 'group' too"),
        ("{local: 1, health: {type: tcp}}", "health", "set 'group' too"),
        ("{local: 1, group: 'a b'}", "group", "may hold only"),
        ("{local: 1, group: g, weight: 1001}", "weight", "between 0 and 1000"),
        ("{local: 1, group: g, weight: -1}", "weight", "between 0 and 1000"),
        ("{local: 1, group: g, group_token: ''}", "group_token", "must not be empty"),
        ("{local: 1, group: g, health: {type: udp}}", "health", "tcp or http"),
        ("{local: 1, group: g, health: {type: tcp, path: /x}}", "health", "http checks only"),
        ("{local: 1, group: g, health: {interval_s: 1, timeout_s: 2}}", "health",
         "must not exceed"),
        ("{local: 1, group: g, health: {unhealthy_after: 0}}", "health.unhealthy_after",
         "at least 1"),
        ("{local: 1, group: g, health: {interval: 1}}", "health.interval",
         "did you mean 'interval_s'?"),
        ("{local: 1, group: g, health: tcp}", "health", "expected a mapping"),
    ],
)  # fmt: skip
def test_bad_client_group_keys(tmp_path: Path, entry: str, key_path: str, what: str) -> None:
    path = write(tmp_path, f"client:\n  services:\n    - {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_client_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}:3: client.services[0].{key_path}: "), message
    assert what in message, message


@pytest.mark.parametrize(
    ("entry", "key_path", "what"),
    [
        ("{name: a, lb: fastest}", "lb", "unknown load-balancing policy 'fastest'"),
        ("{name: a, lb: hash_header}", "lb", "needs a header name"),
        ("{name: a, lb: 'round_robin:x'}", "lb", "takes no argument"),
        ("{name: a, rate_limit: {new_per_s: 0}}", "rate_limit.new_per_s", "greater than 0"),
        ("{name: a, rate_limit: {burst: 3}}", "rate_limit", "new_per_s"),
        ("{name: a, rate_limit: {new_per_s: 1, per_s: 2}}", "rate_limit.per_s", "unknown key"),
        ("{name: a, per_source: {}}", "per_source", "max_connections, new_per_s or both"),
        ("{name: a, per_source: {max_connections: 0}}", "per_source.max_connections",
         "at least 1"),
        ("{name: a, circuit: {failures: 0}}", "circuit.failures", "at least 1"),
        ("{name: a, circuit: {cooldown_s: -1}}", "circuit.cooldown_s", "greater than 0"),
        ("{name: a, group_token: 5}", "group_token", "<secret>"),
    ],
)  # fmt: skip
def test_bad_server_policy_keys(tmp_path: Path, entry: str, key_path: str, what: str) -> None:
    path = write(tmp_path, f"server:\n  services:\n    - {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}:3: server.services[0].{key_path}: "), message
    assert what in message, message


def test_up_group_flags_apply_to_the_command_line_services(tmp_path: Path) -> None:
    token_file = tmp_path / "group.token"
    token_file.write_text("file-secret-0123\n")
    args = build_parser().parse_args(
        ["up", "--token", TOKEN, "--tcp", "8001", "--udp", "dns=53", "--group", "web",
         "--group-token-file", str(token_file), "--weight", "3"]
    )  # fmt: skip
    services = _load_client(args).services
    assert [s.name for s in services] == ["tcp-8001", "dns"]
    assert {s.group for s in services} == {GroupSpec("web", Secret("file-secret-0123"), 3)}
    plain = _load_client(build_parser().parse_args(["up", "--token", TOKEN, "--tcp", "1"]))
    assert plain.services[0].group is None


@pytest.mark.parametrize(
    ("flags", "what"),
    [
        (["--tcp", "1", "--weight", "2"], "--weight needs --group"),
        (["--tcp", "1", "--group-token", "x"], "--group-token needs --group"),
        (["--group", "web"], "--group applies to the services of --tcp"),
        (["--tcp", "1", "--group", "a b"], "may hold only"),
        (["--tcp", "1", "--group", "g", "--weight", "5000"], "between 0 and 1000"),
        (["--tcp", "1", "--group", "g", "--group-token", ""], "must not be empty"),
    ],
)
def test_up_group_flag_errors(flags: list[str], what: str) -> None:
    args = build_parser().parse_args(["up", "--token", TOKEN, *flags])
    with pytest.raises(SpecError, match=what):
        _load_client(args)


def test_group_token_file_errors(tmp_path: Path) -> None:
    base = ["up", "--token", TOKEN, "--tcp", "1", "--group", "g"]
    missing = build_parser().parse_args([*base, "--group-token-file", str(tmp_path / "none")])
    with pytest.raises(ConfigError, match="cannot read"):
        _load_client(missing)
    (tmp_path / "empty").write_text("\n")
    empty = build_parser().parse_args([*base, "--group-token-file", str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="is empty"):
        _load_client(empty)
    both = build_parser().parse_args(
        [*base, "--group-token", "a", "--group-token-file", str(tmp_path / "empty")]
    )
    with pytest.raises(SpecError, match="not both"):
        _load_client(both)


def test_reload_registers_again_only_for_what_the_server_sees() -> None:
    base = ServiceSpec("web", "tcp", "127.0.0.1", 8001, group=GroupSpec("g", Secret("s1"), 1))
    old = ClientConfig(token=Secret(TOKEN), services=(base,))

    def diff(group: GroupSpec | None) -> tuple[bool, bool]:
        spec = dataclasses.replace(base, group=group)
        result = diff_services(old, dataclasses.replace(old, services=(spec,)))
        return bool(result.changed), bool(result.local_only)

    assert base.group is not None
    assert diff(base.group) == (False, False)
    assert diff(dataclasses.replace(base.group, weight=5)) == (False, True)
    health = HealthSettings(interval_s=1, timeout_s=0.5)
    assert diff(dataclasses.replace(base.group, health=health)) == (False, True)
    assert diff(dataclasses.replace(base.group, name="h")) == (True, False)
    assert diff(dataclasses.replace(base.group, token=Secret("s2"))) == (True, False)
    assert diff(None) == (True, False)
