"""The client's UDP counters, end to end: metrics, the admin API and the live panel all show
the datagrams a visitor sent through `up` (they used to read 0 for `in` and for flows)."""

from __future__ import annotations

import io
import re
import urllib.request

import anyio
import pytest
from rich.console import Console

from muxtunnel.client import Client
from muxtunnel.console import Panel
from muxtunnel.datagrams import open_udp
from muxtunnel.model import Endpoint, ServiceSpec
from muxtunnel.server import Server
from muxtunnel.statusview import fetch_status

from .helpers import WAIT_S, client_config, public_port, server_config, serving

pytestmark = pytest.mark.anyio

DATAGRAM = b"q" * 100
SENT = 3


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and dict(re.findall(r'(\w+)="([^"]*)"', line)) == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in:\n{text}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def test_client_udp_counters_in_metrics_admin_and_panel() -> None:
    replies: list[bytes] = []

    def echo(data: bytes, address: tuple[str, int]) -> None:
        service.send(data[:10], address)  # a shorter reply: each direction has its own count

    service = await open_udp(echo, local=("127.0.0.1", 0))
    spec = ServiceSpec("dns", "udp", "127.0.0.1", service.port)
    endpoint = Endpoint("127.0.0.1", 0)
    server = Server(server_config())
    try:
        async with serving(server):
            assert server.port is not None
            config = client_config(server.port, spec, metrics=endpoint, admin=endpoint)
            client = Client(config)
            async with serving(client) as ports:
                port = public_port(client, "dns")
                visitor = await open_udp(lambda d, _: replies.append(d), remote=("127.0.0.1", port))
                try:
                    with anyio.fail_after(WAIT_S):
                        for _ in range(SENT):
                            assert visitor.send(DATAGRAM)
                            count = len(replies)
                            while len(replies) == count:
                                await anyio.sleep(0.01)
                    text = await anyio.to_thread.run_sync(_scrape, ports["metrics"])
                    data = await anyio.to_thread.run_sync(
                        fetch_status, f"127.0.0.1:{ports['admin']}", None
                    )
                    panel = Console(width=120, record=True, file=io.StringIO())
                    panel.print(Panel().render(client.status(), 120, 24))
                    shown = panel.export_text()
                finally:
                    visitor.close()
    finally:
        service.close()
    sent_in, sent_out = SENT * len(DATAGRAM), SENT * 10
    total = "muxtunnel_service_bytes_total"
    assert _metric(text, total, service="dns", direction="in") == sent_in
    assert _metric(text, total, service="dns", direction="out") == sent_out
    assert _metric(text, "muxtunnel_service_connections_total", service="dns") == 1
    assert _metric(text, "muxtunnel_service_open_connections", service="dns") == 1
    (row,) = data["services"]
    assert (row["bytes_in"], row["bytes_out"], row["connections"]) == (sent_in, sent_out, 1)
    (line,) = [line for line in shown.splitlines() if line.strip().startswith("dns ")]
    assert re.search(r"\budp\b.*\s1\s", line), shown
