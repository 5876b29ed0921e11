"""Operator safety: token-less endpoints only on loopback, tokens strong and off the command line,
untrusted text never read as markup, the failure limiter keeps the sources it blocks, `cert`
never follows a planted symlink, and empty UDP datagrams arrive."""

from __future__ import annotations

from pathlib import Path

import pytest

from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.config._values import is_loopback


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- finding 16: a token-less endpoint binds on loopback only, judged by parsing the address ---


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LocalHost", "::ffff:127.0.0.1"],
)
def test_loopback_addresses_are_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.example.net",  # a name anybody can register and point anywhere
        "127.0.0.1.nip.io",
        "localhost.example.net",
        "foo.localhost",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "1270.0.0.1",
    ],
)
def test_names_and_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("bind", ["127.example.net:9100", "127.0.0.1.nip.io:9100"])
def test_an_endpoint_on_a_name_that_starts_like_loopback_needs_a_token(
    tmp_path: Path, bind: str
) -> None:
    for role, load in (("server", load_server_config), ("client", load_client_config)):
        for key in ("metrics", "admin"):
            path = write(tmp_path, f"{role}:\n  {key}: '{bind}'\n")
            with pytest.raises(ConfigError, match="not a loopback address: give a bearer token"):
                load(path, env={})


def test_an_endpoint_on_loopback_needs_no_token(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  metrics: '127.0.0.9:9100'\n  admin: 'localhost:9101'\n")
    config = load_server_config(path, env={})
    assert config.metrics is not None and config.metrics.host == "127.0.0.9"
    assert config.admin is not None and config.admin.host == "localhost"
