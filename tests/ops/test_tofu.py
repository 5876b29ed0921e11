"""Trust on first use, in process: what `up` remembers of a server, and when."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from muxtunnel.client import Client, FatalError
from muxtunnel.model import ClientTls, Secret, ServerTls
from muxtunnel.trust import KnownHosts

from .helpers import (
    WAIT_S,
    Pair,
    client_config,
    echo_service,
    echo_through,
    public_port,
    running_client,
    running_server,
    server_config,
    tcp,
)

pytestmark = pytest.mark.anyio


async def test_a_server_is_remembered_only_once_it_proved_the_token(
    certs: dict[str, Pair], tmp_path: Path
) -> None:
    """A first connection whose registration fails (a wrong token here; a man in the middle
    who cannot prove the token alike) remembers nothing; one that registers remembers the
    server's fingerprint, and the next connection is checked against it."""
    known_hosts = tmp_path / "state" / "known_hosts"
    tofu = ClientTls(known_hosts=str(known_hosts))
    server_tls = ServerTls(certs["server"].cert, certs["server"].key)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        address = f"127.0.0.1:{server.port}"
        wrong = client_config(server.port, tcp("web", local), tls=tofu, token=Secret("x" * 20))
        with pytest.raises(FatalError, match="authentication failed"), anyio.fail_after(WAIT_S):
            await Client(wrong).run()
        assert not known_hosts.exists()
        config = client_config(server.port, tcp("web", local), tls=tofu)
        async with running_client(config) as client:
            assert await echo_through(public_port(client, "web"), b"hello") == b"hello"
        [entry] = KnownHosts(str(known_hosts)).entries()
        assert (entry.address, entry.fingerprint) == (address, certs["server"].fingerprint)
        assert known_hosts.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        async with running_client(config) as client:  # known now: connects as before
            assert await echo_through(public_port(client, "web"), b"again") == b"again"
        assert len(KnownHosts(str(known_hosts)).entries()) == 1


async def test_a_changed_certificate_is_refused_before_any_registration(
    certs: dict[str, Pair], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    server_tls = ServerTls(certs["mitm"].cert, certs["mitm"].key)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        known_hosts.write_text(
            f"# a comment\n127.0.0.1:{server.port} {certs['server'].fingerprint}\n"
        )
        tofu = ClientTls(known_hosts=str(known_hosts))
        config = client_config(server.port, tcp("web", local), tls=tofu)
        with pytest.raises(FatalError) as info, anyio.fail_after(WAIT_S):
            await Client(config).run()
        message = str(info.value)
        assert "the server's certificate changed" in message
        assert f"now presents {certs['mitm'].fingerprint}" in message
        assert f"{known_hosts}:2 remembers {certs['server'].fingerprint}" in message
        assert server.registry.by_name == {}  # nothing was registered through him
        assert server.auth_failures == 0  # and no token tag was even sent


async def test_a_broken_known_hosts_file_is_an_error_that_names_the_line(
    certs: dict[str, Pair], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("127.0.0.1:1 sha256:ab\nnot a line at all\n")
    server_tls = ServerTls(certs["server"].cert, certs["server"].key)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        config = client_config(
            server.port, tcp("web", local), tls=ClientTls(known_hosts=str(known_hosts))
        )
        with pytest.raises(FatalError, match=f"{known_hosts}:2: expected 'HOST:PORT sha256:HEX'"):
            with anyio.fail_after(WAIT_S):
                await Client(config).run()
