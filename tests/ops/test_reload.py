"""Hot reload: services come and go while an untouched service's visitor keeps transferring."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import anyio.abc
import pytest

from muxtunnel.config import load_client_config, load_server_config
from muxtunnel.model import Secret, ServicePolicy
from muxtunnel.reload import ConfigWatcher, diff_services

from .helpers import (
    TOKEN,
    WAIT_S,
    client_config,
    digest,
    echo_service,
    echo_through,
    free_port,
    public_port,
    running_client,
    running_server,
    server_config,
    tcp,
    wait_until,
)

pytestmark = pytest.mark.anyio


def _client_yaml(server_port: int, services: str) -> str:
    return (
        "client:\n"
        f"  server: 127.0.0.1:{server_port}\n"
        f"  token: {TOKEN.value}\n"
        "  tls: false\n"  # the in-process server here runs without TLS
        "  reconnect_min_s: 0.1\n"
        "  reconnect_max_s: 0.5\n"
        "  services:\n" + services
    )


async def _refused(port: int) -> bool:
    """Nothing serves the port any more: connecting fails, or the connection is cut at once."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    async with stream:
        try:
            with anyio.fail_after(WAIT_S):
                await stream.send(b"x")
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


async def test_client_reload_adds_removes_and_restarts_without_losing_a_byte(
    tmp_path: Path,
) -> None:
    path = tmp_path / "up.yaml"
    old_port, new_port = free_port(), free_port()
    async with echo_service() as echo, running_server(server_config()) as server:
        assert server.port is not None
        path.write_text(
            _client_yaml(
                server.port,
                f"    - {{name: keep, local: {echo}}}\n"
                f"    - {{name: gone, local: {echo}}}\n"
                f"    - {{name: moved, local: {echo}, remote_port: {old_port}}}\n",
            )
        )
        config = load_client_config(path)
        async with running_client(config) as client:
            watcher = ConfigWatcher(
                str(path),
                lambda: load_client_config(path),
                client.apply_config,
                poll_interval_s=0.1,
                use_signal=False,
            )
            keep_port = public_port(client, "keep")
            gone_port = public_port(client, "gone")
            assert public_port(client, "moved") == old_port
            payload = os.urandom(2 * 1024 * 1024)
            echoed = bytearray()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher.run)
                visitor = await anyio.connect_tcp("127.0.0.1", keep_port)

                echo_done = anyio.Event()

                async def read_echo() -> None:
                    async for chunk in visitor:
                        echoed.extend(chunk)
                    echo_done.set()

                tg.start_soon(read_echo)
                sent = 0
                chunk = 16 * 1024
                # The first half, then the reload while the visitor's bytes are in flight.
                while sent < len(payload) // 2:
                    await visitor.send(payload[sent : sent + chunk])
                    sent += chunk
                    await anyio.sleep(0.005)
                path.write_text(
                    _client_yaml(
                        server.port,
                        f"    - {{name: keep, local: {echo}}}\n"
                        f"    - {{name: moved, local: {echo}, remote_port: {new_port}}}\n"
                        f"    - {{name: added, local: {echo}}}\n",
                    )
                )
                while sent < len(payload):
                    await visitor.send(payload[sent : sent + chunk])
                    sent += chunk
                    await anyio.sleep(0.005)
                await wait_until(lambda: watcher.reloads == 1)
                await visitor.send_eof()
                with anyio.fail_after(WAIT_S):
                    await echo_done.wait()
                await visitor.aclose()

                assert digest(bytes(echoed)) == digest(payload)
                assert public_port(client, "keep") == keep_port
                assert sorted(client.services) == ["added", "keep", "moved"]
                await wait_until(lambda: client.services["added"].public is not None)
                assert public_port(client, "moved") == new_port
                assert sorted(server.registry.by_name) == ["added", "keep", "moved"]
                assert await echo_through(new_port, b"moved") == b"moved"
                assert await echo_through(public_port(client, "added"), b"new") == b"new"
                assert await _refused(gone_port)
                assert await _refused(old_port)
                assert client.reconnects == 0  # one session throughout

                # An invalid file is rejected; everything keeps running as it was.
                path.write_text(path.read_text() + "  bogus_key: 1\n")
                await wait_until(lambda: watcher.rejected == 1)
                assert sorted(client.services) == ["added", "keep", "moved"]
                assert await echo_through(keep_port, b"still") == b"still"
                tg.cancel_scope.cancel()


async def test_server_reload_on_sighup_applies_tokens_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "listen.yaml"
    base = (
        "server:\n  bind: 127.0.0.1:1\n  public_host: 127.0.0.1\n"
        f"  token: {TOKEN.value}\n  services:\n"
    )
    path.write_text(base + "    - {name: web}\n")
    async with echo_service() as echo, running_server(server_config()) as server:
        assert server.port is not None
        specs = (tcp("web", echo), tcp("db", echo))
        async with running_client(client_config(server.port, *specs)) as client:
            watcher = ConfigWatcher(
                None, lambda: load_server_config(path), server.apply_config, use_signal=True
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher.run)
                await anyio.sleep(0.1)  # the signal receiver is in place
                path.write_text(
                    base
                    + "    - {name: web, bandwidth_bytes_per_s: 500000, max_connections: 3}\n"
                    + "    - {name: db, token: another-token-0123456789}\n"
                )
                os.kill(os.getpid(), signal.SIGHUP)
                await wait_until(lambda: watcher.reloads == 1)
                limiter = server.limiter_of("web")
                assert limiter.inbound is not None and limiter.inbound.rate == 500_000
                assert limiter.max_connections == 3
                # db's token changed: its registration is closed and the client told.
                await wait_until(lambda: client.services["db"].public is None)
                assert "db" not in server.registry.by_name
                assert await echo_through(public_port(client, "web"), b"ok") == b"ok"
                assert server.config.bind_port == 0  # bound addresses never move on reload

                path.write_text("server:\n  token:\n")  # no token at all: rejected
                os.kill(os.getpid(), signal.SIGHUP)
                await wait_until(lambda: watcher.rejected == 1)
                assert server.tokens.has_any_token
                tg.cancel_scope.cancel()


def test_diff_services_tells_restarts_from_local_changes() -> None:
    old = client_config(1, tcp("a", 1), tcp("b", 2), tcp("c", 3, remote_port=9000))
    new = client_config(1, tcp("a", 1), tcp("b", 22), tcp("c", 3, remote_port=9001), tcp("d", 4))
    diff = diff_services(old, new)
    assert [s.name for s in diff.added] == ["d"]
    assert [s.name for s in diff.changed] == ["c"]
    assert [s.name for s in diff.local_only] == ["b"]
    assert diff.removed == ()
    changed_default = client_config(1, tcp("a", 1), token=Secret("other-0123456789"))
    assert [s.name for s in diff_services(old, changed_default).changed] == ["a"]
    own = client_config(1, tcp("a", 1, token=Secret("own-0123456789")))
    assert diff_services(own, own) == diff_services(old, old)
    assert not diff_services(old, old)


def test_policy_defaults() -> None:
    assert ServicePolicy("x").compression is True
