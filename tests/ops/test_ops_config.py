"""Config keys and flags of the operations features, and `muxtunnel cert`."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from muxtunnel import cli
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.model import ClientTls, Endpoint, Secret, ServerTls, ServicePolicy
from muxtunnel.tls import parse_fingerprint

PIN = "sha256:" + "AB:" * 31 + "AB"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_server_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server:
  token: t-0123456789abcdef
  tls: {cert: certs/s.crt, key: /etc/s.key, client_ca: ca.pem}
  metrics: "127.0.0.1:9100"
  admin: {bind: "0.0.0.0:7836", token: admin-0123456789}
  compression_level_max: 5
  services:
    - {name: web, bandwidth_bytes_per_s: 1MiB, max_connections: 10, compression: false}
""",
    )
    config = load_server_config(path, env={})
    assert config.tls == ServerTls(
        str(tmp_path / "certs/s.crt"), "/etc/s.key", str(tmp_path / "ca.pem")
    )
    assert config.metrics == Endpoint("127.0.0.1", 9100)
    assert config.admin == Endpoint("0.0.0.0", 7836, Secret("admin-0123456789"))
    assert config.compression_level_max == 5
    assert config.services == (ServicePolicy("web", None, 1 << 20, 10, compression=False),)


def test_client_keys_and_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
client:
  server: example.com
  token: t-0123456789abcdef
  tls: {{fingerprint: ["{PIN}"], cert: c.crt, key: c.key}}
  admin: 7837
  services:
    - {{name: web, local: 3000, compression: zstd, compression_level: 9}}
""",
    )
    config = load_client_config(path, env={})
    assert config.tls == ClientTls(
        fingerprints=("ab" * 32,), cert=str(tmp_path / "c.crt"), key=str(tmp_path / "c.key")
    )
    assert config.admin == Endpoint("127.0.0.1", 7837)
    assert (config.services[0].compression, config.services[0].compression_level) == ("zstd", 9)
    flags = {"tls": {"enabled": True, "insecure": True, "ca": None}}
    assert load_client_config(path, flags, env={}).tls == ClientTls(
        fingerprints=("ab" * 32,),
        insecure=True,
        cert=str(tmp_path / "c.crt"),
        key=str(tmp_path / "c.key"),
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("client:\n  tls: {fingerprint: sha256:abc}\n", "expected a SHA-256 fingerprint"),
        ("client:\n  tls: {insecure: true, cert: c.crt}\n", "needs both 'cert' and 'key'"),
        ("client:\n  admin: 0.0.0.0:7836\n", "not a loopback address: give a bearer token"),
        (
            "client:\n  services:\n    - {local: 53, type: udp, compression: zstd}\n",
            "compression is for tcp services only",
        ),
        ("client:\n  services:\n    - {local: 1, compression: lz4}\n", "expected 'zstd'"),
        ("server:\n  tls: {cert: a.crt}\n", "needs both 'cert' and 'key'"),
        ("server:\n  metrics: '[::]:9100'\n", "not a loopback address"),
        ("server:\n  services:\n    - {name: a, max_connections: 0}\n", "at least 1"),
    ],
)
def test_invalid_keys_say_why(tmp_path: Path, section: str, message: str) -> None:
    path = write(tmp_path, section)
    role = "server" if section.startswith("server") else "client"
    load = load_server_config if role == "server" else load_client_config
    with pytest.raises(ConfigError, match=message) as info:
        load(path, env={})
    assert str(info.value).startswith(f"{path}:")


def test_fingerprints_in_any_usual_spelling() -> None:
    assert parse_fingerprint(PIN) == parse_fingerprint("ab" * 32) == "ab" * 32
    with pytest.raises(ValueError):
        parse_fingerprint("md5:" + "ab" * 16)


def test_cert_command_prints_the_fingerprint_to_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cert", "--out", str(tmp_path), "--name", "tunnel.example.com"]) == 0
    out, err = capsys.readouterr()
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "server.crt").read_text())
    from muxtunnel.tls import format_fingerprint

    assert out.strip() == format_fingerprint(der)
    assert f"--server-fingerprint {out.strip()}" in err
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    assert cli.main(["cert", "--out", str(tmp_path)]) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--server", "127.0.0.1:1", "--tcp", "1", "--no-tls", "--tls-ca", "system"],
        ["up", "--server", "127.0.0.1:1", "--tcp", "1", "--no-tls", "--insecure"],
        ["listen", "--no-tls", "--tls-cert", "a.crt", "--tls-key", "a.key"],
    ],
)
def test_no_tls_with_tls_flags_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "--no-tls contradicts --" in capsys.readouterr().err
