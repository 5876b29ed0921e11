"""Metrics and the admin API, read while a transfer runs; `muxtunnel status` renders them."""

from __future__ import annotations

import re
import urllib.request

import anyio
import anyio.abc
import pytest

from muxtunnel import cli
from muxtunnel.client import Client
from muxtunnel.model import Endpoint, Secret
from muxtunnel.server import Server
from muxtunnel.statusview import StatusError, fetch_status

from .helpers import client_config, public_port, server_config, serving, tcp

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = Secret("admin-token-0123456789")


async def _trickle(stream: anyio.abc.SocketStream) -> None:
    """Local service: 16 KiB every 20 ms until the visitor goes away."""
    try:
        while True:
            await stream.send(b"m" * 16384)
            await anyio.sleep(0.02)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics:\n{text}")


async def test_metrics_and_admin_api_while_a_transfer_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    local = listener.extra(anyio.abc.SocketAttribute.local_port)
    endpoint = Endpoint("127.0.0.1", 0)
    admin = Endpoint("127.0.0.1", 0, ADMIN_TOKEN)
    server = Server(server_config(metrics=endpoint, admin=admin))
    async with anyio.create_task_group() as tg, serving(server) as server_ports:
        tg.start_soon(listener.serve, _trickle)
        assert server.port is not None
        config = client_config(server.port, tcp("feed", local), metrics=endpoint, admin=endpoint)
        client = Client(config)
        async with serving(client) as client_ports:
            port = public_port(client, "feed")
            async with await anyio.connect_tcp("127.0.0.1", port) as visitor:
                host, visitor_port = visitor.extra(anyio.abc.SocketAttribute.local_address)[:2]
                visitor_address = f"{host}:{visitor_port}"
                got = 0
                with anyio.move_on_after(0.3):
                    while True:
                        got += len(await visitor.receive())
                scrapes = []
                for _ in range(2):
                    text = await anyio.to_thread.run_sync(_scrape, server_ports["metrics"])
                    scrapes.append(text)
                    with anyio.move_on_after(0.4):
                        while True:
                            got += len(await visitor.receive())
                first, second = (
                    _value(text, "muxtunnel_service_bytes_total", direction="out", service="feed")
                    for text in scrapes
                )
                assert 0 < first < second  # grows while the connection is still open
                assert _value(scrapes[1], "muxtunnel_service_open_connections", service="feed") == 1
                assert _value(scrapes[1], "muxtunnel_sessions") == 1
                assert _value(scrapes[1], "muxtunnel_services") == 1
                assert _value(scrapes[1], "muxtunnel_open_streams") >= 2
                assert _value(scrapes[1], "muxtunnel_auth_failures_total") == 0
                client_text = await anyio.to_thread.run_sync(_scrape, client_ports["metrics"])
                assert (
                    _value(
                        client_text,
                        "muxtunnel_service_bytes_total",
                        direction="out",
                        service="feed",
                    )
                    > 0
                )
                assert _value(client_text, "muxtunnel_reconnects_total") == 0

                address = f"127.0.0.1:{server_ports['admin']}"
                with pytest.raises(StatusError, match="bearer token"):
                    await anyio.to_thread.run_sync(fetch_status, address, None)
                data = await anyio.to_thread.run_sync(fetch_status, address, ADMIN_TOKEN.value)
                assert data["role"] == "server"
                assert [s["services"] for s in data["sessions"]] == [["feed"]]
                (service,) = data["services"]
                assert service["public"] == f"127.0.0.1:{port}"
                assert service["connections"] == 1
                (connection,) = data["connections"]
                assert connection["peer"] == visitor_address
                assert connection["bytes_out"] > 0 and connection["age_s"] > 0.5

                args = ["status", "--admin", address, "--admin-token", ADMIN_TOKEN.value]
                assert await anyio.to_thread.run_sync(cli.main, args) == 0
                shown = capsys.readouterr().out
                assert "muxtunnel listen" in shown
                assert f"127.0.0.1:{port}" in shown and visitor_address in shown

                client_admin = f"127.0.0.1:{client_ports['admin']}"
                args = ["status", "--admin", client_admin]
                assert await anyio.to_thread.run_sync(cli.main, args) == 0
                shown = capsys.readouterr().out
                assert "muxtunnel up" in shown and "online" in shown and "feed" in shown
        tg.cancel_scope.cancel()


def test_status_without_a_running_process_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--admin", "127.0.0.1:1"]) == 1
    assert "cannot reach the admin API at 127.0.0.1:1" in capsys.readouterr().err
