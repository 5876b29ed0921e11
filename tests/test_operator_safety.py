"""Operator safety: token-less endpoints only on loopback, tokens strong and off the command line,
untrusted text never read as markup, the failure limiter keeps the sources it blocks, `cert`
never follows a planted symlink, and empty UDP datagrams arrive."""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from muxtunnel import cli
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.config._values import is_loopback
from muxtunnel.model import Secret


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`cli.main` configures logging onto the stderr of its test (capsys): undo it after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


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


# --- finding 14: text from the other side is shown as it is, never read as rich markup ---

MARKUP = "[/x][bold]b[/bold][link=http://e]l[/link]"


def _hostile_server_document() -> dict[str, object]:
    return {
        "role": "server",
        "version": "1",
        "bind": f"{MARKUP}:7835",
        "tls": MARKUP,
        "uptime_s": 5.0,
        "auth_failures": 0,
        "sessions": [
            {
                "id": 1,
                "peer": MARKUP,
                "age_s": 1.0,
                "rtt_ms": 0.5,
                "streams": 2,
                "services": [MARKUP],
            }
        ],
        "services": [
            {
                "name": MARKUP,
                "type": "tcp[/y]",
                "public": f"{MARKUP}:8080",
                "connections": 1,
                "bytes_in": 10,
                "bytes_out": 20,
                "compression": MARKUP,
            }
        ],
        "connections": [
            {
                "service": MARKUP,
                "peer": f"{MARKUP}:5555",
                "age_s": 1.0,
                "bytes_in": 1,
                "bytes_out": 2,
            }
        ],
    }


def _hostile_client_document() -> dict[str, object]:
    document = _hostile_server_document()
    for key in ("bind", "tls", "uptime_s", "auth_failures", "sessions"):
        del document[key]
    services = document["services"]
    assert isinstance(services, list)
    services[0]["local"] = MARKUP
    document.update(role="client", server=MARKUP, connected=True, rtt_ms=1.0, reconnects=0)
    return document


@pytest.mark.parametrize("document", [_hostile_server_document, _hostile_client_document])
def test_status_tables_show_markup_as_text(document: Callable[[], dict[str, Any]]) -> None:
    from rich.console import Console

    from muxtunnel.statusview import print_status

    out = io.StringIO()
    print_status(document(), Console(file=out, width=400, color_system=None))
    text = out.getvalue()
    assert text.count("[/x]") >= 3, text  # names, addresses and peers, each shown as sent
    assert "[link=http://e]" in text


def test_status_command_survives_a_hostile_admin_api(capsys: pytest.CaptureFixture[str]) -> None:
    """`muxtunnel status` against an admin API that answers markup: tables, exit 0."""
    body = json.dumps(_hostile_server_document()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = cli.main(["status", "--admin", f"127.0.0.1:{server.server_port}"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    out = capsys.readouterr().out
    assert code == 0
    assert "[/x]" in out


def test_a_malformed_status_document_is_an_error_not_a_crash() -> None:
    from muxtunnel.statusview import StatusError, render_status

    document = _hostile_server_document()
    document["uptime_s"] = "soon"
    with pytest.raises(StatusError, match="malformed"):
        render_status(document)


def test_live_panel_shows_markup_as_text() -> None:
    from rich.console import Console

    from muxtunnel.console import Panel
    from muxtunnel.status import ClientStatus, ServiceRow, SessionRow

    status = ClientStatus(
        version="1",
        server=f"{MARKUP}:7835",
        reconnects=0,
        sessions=(SessionRow(0, MARKUP, 1.0, 0.001, 2, (MARKUP,)),),
        services=(ServiceRow(MARKUP, "tcp", f"{MARKUP}:8080", local=MARKUP),),
    )
    out = io.StringIO()

    async def render() -> None:  # the panel reads the event loop's clock
        Console(file=out, width=400, color_system=None).print(Panel().render(status, 400, 24))

    anyio.run(render)
    assert out.getvalue().count("[/x]") >= 3, out.getvalue()


# --- finding 17: empty datagrams are datagrams ---

LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_udp_endpoint_sends_empty_datagrams(anyio_backend: object) -> None:
    """Bound (an address per datagram) and connected sockets alike, on asyncio and uvloop."""
    from muxtunnel.datagrams import open_udp

    received: list[bytes] = []
    got = anyio.Event()

    def on_datagram(data: bytes, _: tuple[str, int]) -> None:
        received.append(data)
        if len(received) == 4:
            got.set()

    target = await open_udp(on_datagram, local=("127.0.0.1", 0))
    bound = await open_udp(lambda data, address: None, local=("127.0.0.1", 0))
    connected = await open_udp(lambda data, address: None, remote=("127.0.0.1", target.port))
    try:
        assert bound.send(b"", ("127.0.0.1", target.port))
        assert bound.send(b"a", ("127.0.0.1", target.port))
        assert connected.send(b"")
        assert connected.send(b"b")
        with anyio.fail_after(5):
            await got.wait()
    finally:
        for endpoint in (target, bound, connected):
            endpoint.close()
    assert sorted(received) == [b"", b"", b"a", b"b"]
    assert not connected.send(b"")  # closed: dropped, not an error


# --- finding 15 (limiter): rotating through addresses does not reset a blocked one ---


def test_limiter_keeps_a_blocked_source_while_10000_others_fail_once() -> None:
    from muxtunnel.sources import FailureLimiter

    limiter = FailureLimiter(burst=5, per_min=5)  # the server's defaults: 10 000 sources
    for _ in range(5):
        limiter.record_failure("203.0.113.7", 0.0)
    assert not limiter.allowed("203.0.113.7", 0.0)
    for i in range(20_000):  # an attacker's other addresses, one failure each
        limiter.record_failure(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1.0)
    assert len(limiter) == limiter.max_sources  # bounded all the same
    assert not limiter.allowed("203.0.113.7", 1.0)
    assert limiter.retry_after("203.0.113.7", 1.0) == pytest.approx(11.0)


def test_limiter_forgets_the_source_with_most_tokens_first() -> None:
    from muxtunnel.sources import FailureLimiter

    limiter = FailureLimiter(burst=5, per_min=60, max_sources=3)  # a token a second
    for _ in range(4):
        limiter.record_failure("many", 0.0)  # 1 token left
    limiter.record_failure("old", 0.0)  # 4 tokens, but 2 s ago: refilled to 5 by now
    limiter.record_failure("one", 1.5)  # 4 tokens
    limiter.record_failure("new", 1.9)  # full: the one with most tokens now goes ("old")
    assert len(limiter) == 3
    assert limiter.retry_after("many", 1.9) == 0.0 and limiter._buckets["many"].tokens < 3
    assert "old" not in limiter._buckets
    limiter.record_failure("newer", 1.9)  # next: "one" (4.4 tokens) before "new" (4)
    assert set(limiter._buckets) == {"many", "new", "newer"}


def test_limiter_evicts_the_longest_blocked_when_every_source_is_blocked() -> None:
    from muxtunnel.sources import FailureLimiter

    limiter = FailureLimiter(burst=1, per_min=60, max_sources=2)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("b", 0.5)
    limiter.record_failure("c", 0.6)  # a is the closest to its next try: it goes
    assert set(limiter._buckets) == {"b", "c"}


def test_limiter_heap_stays_bounded_under_repeated_failures() -> None:
    from muxtunnel.sources import FailureLimiter

    limiter = FailureLimiter(burst=1_000_000, per_min=1, max_sources=10)
    for i in range(10_000):
        limiter.record_failure(str(i % 10), 0.0)
    assert len(limiter._heap) <= 2 * len(limiter) + 64
    limiter.per_s = 2.0  # a reload changes the rate: keys are recomputed
    assert len(limiter._heap) == len(limiter)


# --- finding 15 (strength): short tokens are refused, with a way to make a good one ---

STRONG = "strong-token-0123456789"


@pytest.mark.parametrize(
    ("role", "text"),
    [
        ("server", "server:\n  token: abc\n"),
        ("server", "server:\n  token: " + STRONG + "\n  services:\n    - {name: a, token: abc}\n"),
        ("server", "server:\n  token: " + STRONG + "\n  admin: {bind: '0.0.0.0:1', token: abc}\n"),
        ("client", "client:\n  token: abc\n"),
        ("client", "client:\n  services:\n    - {local: 1, token: abc}\n"),
        ("client", "client:\n  metrics: {bind: '127.0.0.1:1', token: abc}\n"),
    ],
)
def test_short_tokens_are_refused_with_how_to_make_one(
    tmp_path: Path, role: str, text: str
) -> None:
    load = load_server_config if role == "server" else load_client_config
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert "too short (3 characters, at least 16" in message
    assert "openssl rand -base64 32" in message and "secrets.token_urlsafe(32)" in message
    assert "--allow-weak-token" in message
    assert "abc" not in message.replace("abcdef", "")  # the token itself is never shown
    weak = write(tmp_path, text.replace(f"{role}:\n", f"{role}:\n  allow_weak_token: true\n"))
    load(weak, env={})  # knowingly: accepted
    load(path, {"allow_weak_token": True}, env={})


def test_short_tokens_from_the_command_line_and_environment_are_refused() -> None:
    with pytest.raises(ConfigError, match="command line: token: the token is too short"):
        load_server_config(None, {"token": "abc"}, env={})
    with pytest.raises(ConfigError, match="environment: MUXTUNNEL_TOKEN: the token is too short"):
        load_client_config(None, env={"MUXTUNNEL_TOKEN": "abc"})
    assert load_server_config(None, {"token": STRONG}, env={}).token == Secret(STRONG)


def test_listen_refuses_a_short_token_and_says_how_to_make_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["listen", "--bind", "127.0.0.1:0", "--token", "abc", "--log-format", "json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "openssl rand -base64 32" in err and "--allow-weak-token" in err


# --- finding 12: tokens from files ---


def test_token_files_everywhere_a_token_goes(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    for name in ("default", "web", "admin"):
        (tmp_path / "secrets" / name).write_text(f"  {name}-token-0123456789\n")
    path = write(
        tmp_path,
        "server:\n"
        "  token_file: secrets/default\n"  # relative to the config file's folder
        "  services:\n"
        "    - {name: web, token_file: secrets/web}\n"
        "  admin: {bind: '0.0.0.0:7836', token_file: secrets/admin}\n",
    )
    config = load_server_config(path, env={})
    assert config.token == Secret("default-token-0123456789")
    assert config.services[0].token == Secret("web-token-0123456789")
    assert config.admin is not None and config.admin.token == Secret("admin-token-0123456789")
    client = write(
        tmp_path,
        "client:\n  token_file: secrets/default\n  services:\n"
        "    - {local: 80, token_file: secrets/web}\n",
        "client.yaml",
    )
    loaded = load_client_config(client, env={})
    assert loaded.token == Secret("default-token-0123456789")
    assert loaded.services[0].token == Secret("web-token-0123456789")


def test_a_token_file_flag_replaces_the_files_token(tmp_path: Path) -> None:
    token_path = tmp_path / "token"
    token_path.write_text(STRONG + "\n")
    path = write(tmp_path, "server:\n  token: file-token-0123456789\n")
    config = load_server_config(path, {"token_file": str(token_path)}, env={})
    assert config.token == Secret(STRONG)
    path = write(tmp_path, f"server:\n  token_file: {token_path}\n")
    config = load_server_config(path, {"token": "flag-token-0123456789"}, env={})
    assert config.token == Secret("flag-token-0123456789")
    env = {"MUXTUNNEL_TOKEN": "env-token-0123456789"}  # the file's token_file beats it
    assert load_server_config(path, env=env).token == Secret(STRONG)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the token file"),
        ("", "is empty"),
        (" \n", "is empty"),
        ("one-token-0123456789\ntwo-token-0123456789\n", "more than one line"),
        ("x" * 5000, "not a token file"),
    ],
)
def test_unusable_token_files_are_config_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    token_path = tmp_path / "token"
    if content is not None:
        token_path.write_text(content)
    path = write(tmp_path, f"client:\n  token_file: {token_path}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_client_config(path, env={})
    assert str(info.value).startswith(f"{path}:2: client.token_file:")


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(STRONG)
    path = write(tmp_path, f"client:\n  token: {STRONG}\n  token_file: token\n")
    with pytest.raises(ConfigError, match="either 'token' or 'token_file', not both"):
        load_client_config(path, env={})


def test_help_steers_to_token_files(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("listen", "up", "status"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "-token-file" in out and "process list" in out, command


# --- finding 13: `muxtunnel cert` never writes through a link or into someone else's file ---


def test_cert_refuses_a_dangling_symlink_at_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "server.key").symlink_to(elsewhere / "stolen.key")  # dangling: points nowhere yet
    assert cli.main(["cert", "--out", str(out)]) == 2
    assert "server.key exists" in capsys.readouterr().err
    assert not (elsewhere / "stolen.key").exists()  # the key did not go where the link points
    assert not (out / "server.crt").exists()


def test_cert_force_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "server.key").symlink_to(elsewhere / "stolen.key")
    (out / "server.crt").symlink_to(elsewhere / "victim.crt")
    (elsewhere / "victim.crt").write_text("someone else's file\n")
    assert cli.main(["cert", "--out", str(out), "--force"]) == 0
    assert not (elsewhere / "stolen.key").exists()
    assert (elsewhere / "victim.crt").read_text() == "someone else's file\n"
    for name, mode in (("server.key", 0o600), ("server.crt", 0o644)):
        path = out / name
        assert not path.is_symlink() and path.is_file()
        assert path.stat().st_mode & 0o777 == mode
    assert b"PRIVATE KEY" in (out / "server.key").read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_cert_force_does_not_keep_a_file_another_user_created(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    planted = out / "server.key"
    planted.write_text("")
    planted.chmod(0o666)
    if os.geteuid() == 0:
        os.chown(planted, 65534, 65534)  # nobody's file, as another user would leave it
    before = planted.stat()
    assert cli.main(["cert", "--out", str(out), "--force"]) == 0
    after = planted.stat()
    assert after.st_ino != before.st_ino  # a new file, not the planted one written into
    assert after.st_uid == os.geteuid()
    assert after.st_mode & 0o777 == 0o600


def test_cert_keeps_the_key_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert cli.main(["cert", "--out", str(tmp_path / "fresh")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "fresh" / "server.key").stat().st_mode & 0o777 == 0o600
