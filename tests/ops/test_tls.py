"""TLS on the carrier: pinning, a wrong pin, mutual TLS, and a relaying man in the middle."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import anyio.abc
import pytest

from muxtunnel.client import FatalError
from muxtunnel.model import ClientTls, ServerTls
from muxtunnel.tls import ServerTlsContext, connect_tls

from .helpers import (
    TOKEN,
    WAIT_S,
    Pair,
    client_config,
    echo_service,
    echo_through,
    free_port,
    public_port,
    running_client,
    running_server,
    server_config,
    tcp,
)

pytestmark = pytest.mark.anyio


def pin(pair: Pair) -> tuple[str]:
    return (pair.fingerprint.split(":", 1)[1],)


async def test_pinned_fingerprint_carries_visitors(certs: dict[str, Pair]) -> None:
    server_tls = ServerTls(certs["server"].cert, certs["server"].key)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        config = client_config(
            server.port, tcp("web", local), tls=ClientTls(fingerprints=pin(certs["server"]))
        )
        async with running_client(config) as client:
            payload = os.urandom(300_000)
            assert await echo_through(public_port(client, "web"), payload) == payload
            assert client.session is not None


async def test_ca_file_verifies_the_server_by_name(certs: dict[str, Pair]) -> None:
    server_tls = ServerTls(certs["server"].cert, certs["server"].key)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        tls = ClientTls(ca=certs["server"].cert)
        async with running_client(client_config(server.port, tcp("web", local), tls=tls)) as c:
            assert await echo_through(public_port(c, "web"), b"hello") == b"hello"


def test_wrong_pin_is_refused_with_exit_1(certs: dict[str, Pair], tmp_path: object) -> None:
    """Real processes: `up` with a pin that does not match says why and exits 1, no retry."""
    env = {**os.environ, "MUXTUNNEL_TOKEN": TOKEN.value}
    command = [sys.executable, "-m", "muxtunnel"]
    port = free_port()
    tls = ["--tls-cert", certs["server"].cert, "--tls-key", certs["server"].key]
    listen = subprocess.Popen(
        [*command, "listen", "--bind", f"127.0.0.1:{port}", "--log-format", "json", *tls],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listen.stderr is not None
        assert any('"listening"' in line for line in listen.stderr), "listen did not start"
        wrong = "sha256:" + "ab" * 32
        options = ["--tcp", "web=1", "--log-format", "json", "--server-fingerprint", wrong]
        up = subprocess.run(
            [*command, "up", "--server", f"127.0.0.1:{port}", *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S * 2,
        )
    finally:
        listen.terminate()
        listen.wait(timeout=WAIT_S)
    assert up.returncode == 1, up.stderr
    last = up.stderr.strip().splitlines()[-1]
    assert last.startswith("muxtunnel: the server's certificate fingerprint sha256:")
    assert f"does not match the pinned {wrong}" in last
    assert certs["server"].fingerprint in last


async def test_mutual_tls_needs_the_client_certificate(certs: dict[str, Pair]) -> None:
    server_tls = ServerTls(certs["server"].cert, certs["server"].key, certs["client"].cert)
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        with_cert = ClientTls(
            fingerprints=pin(certs["server"]), cert=certs["client"].cert, key=certs["client"].key
        )
        async with running_client(client_config(server.port, tcp("a", local), tls=with_cert)) as c:
            assert await echo_through(public_port(c, "a"), b"mutual") == b"mutual"
        without = ClientTls(fingerprints=pin(certs["server"]))
        config = client_config(server.port, tcp("b", local), tls=without)
        async with running_client(config, wait=False) as stranger:
            await anyio.sleep(1.0)  # several attempts at reconnect_max_s 0.5
            assert stranger.services["b"].public is None
            assert "b" not in server.registry.by_name


async def _relay(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
    async def copy(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(copy, a, b)
        tg.start_soon(copy, b, a)


async def test_relaying_man_in_the_middle_fails_authentication(certs: dict[str, Pair]) -> None:
    """The client accepted any certificate (--insecure); the channel binding still differs."""
    server_tls = ServerTls(certs["server"].cert, certs["server"].key)
    mitm_tls = ServerTlsContext.load(ServerTls(certs["mitm"].cert, certs["mitm"].key))
    async with echo_service() as local, running_server(server_config(tls=server_tls)) as server:
        assert server.port is not None
        relayed: list[int] = []

        async def intercept(victim: anyio.abc.SocketStream) -> None:
            inner = await mitm_tls.accept(victim)  # terminates TLS with its own certificate
            upstream = await anyio.connect_tcp("127.0.0.1", server.port)
            outer, _ = await connect_tls(upstream, ClientTls(insecure=True), "127.0.0.1")
            relayed.append(1)
            await _relay(inner, outer)

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        mitm_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, intercept)
            config = client_config(mitm_port, tcp("web", local), tls=ClientTls(insecure=True))
            from muxtunnel.client import Client

            with pytest.raises(FatalError) as failure, anyio.fail_after(WAIT_S):
                await Client(config).run()
            tg.cancel_scope.cancel()
        assert relayed, "the client never went through the man in the middle"
        message = str(failure.value)
        assert "authentication failed" in message
        assert "man in the middle" in message
        assert server.auth_failures == 1
        assert "web" not in server.registry.by_name
