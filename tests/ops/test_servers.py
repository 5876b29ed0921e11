"""`Clients`: one `up` registered with several servers, in process.

Each server gets every service over a session of its own; the merged status has a row per
server and one traffic series per service; a reload applies to every server, but a changed
list of servers is refused (it takes a restart); a token one server refuses ends them all.
"""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from muxtunnel.client import Clients, FatalError
from muxtunnel.model import Secret
from muxtunnel.reload import ReloadError

from .helpers import client_config, echo_service, running_server, server_config, tcp, wait_until

pytestmark = pytest.mark.anyio


async def test_every_service_on_every_server_and_one_status() -> None:
    async with (
        echo_service() as echo,
        running_server(server_config()) as a,
        running_server(server_config()) as b,
    ):
        servers = (("127.0.0.1", a.port or 0), ("127.0.0.1", b.port or 0))
        config = client_config(a.port or 0, tcp("web", echo), tcp("db", echo), servers=servers)
        clients = Clients(config)
        async with anyio.create_task_group() as tg:
            await tg.start(clients.run)
            await wait_until(lambda: all(row.connected for row in clients.status().servers))
            for server in (a, b):
                assert sorted(server.registry.by_name) == ["db", "web"]
            status = clients.status()
            assert [row.address for row in status.servers] == [f"127.0.0.1:{p}" for _, p in servers]
            assert [row.id for row in status.sessions] == [0, 1]
            assert sorted(row.name for row in status.traffic) == ["db", "web"]  # summed by name
            assert len(status.services) == 4  # each service once per server

            with pytest.raises(ReloadError, match="servers changed"):
                await clients.apply_config(dataclasses.replace(config, servers=servers[:1]))
            await clients.apply_config(dataclasses.replace(config, services=(tcp("web", echo),)))
            await wait_until(lambda: all(list(s.registry.by_name) == ["web"] for s in (a, b)))
            tg.cancel_scope.cancel()


async def test_a_token_one_server_refuses_ends_them_all() -> None:
    async with (
        echo_service() as echo,
        running_server(server_config()) as a,
        running_server(server_config(token=Secret("another-token-0123456789"))) as b,
    ):
        servers = (("127.0.0.1", a.port or 0), ("127.0.0.1", b.port or 0))
        clients = Clients(client_config(a.port or 0, tcp("web", echo), servers=servers))
        with anyio.fail_after(20), pytest.raises(FatalError, match=f"127.0.0.1:{b.port}"):
            await clients.run()
