"""Member ids, reconnects and what old servers mean to a member, with an in-process server and
clients (`muxtunnel.server.Server`, `muxtunnel.client.Client`)."""

from __future__ import annotations

import socket

import anyio
import pytest
from ops.helpers import client_config, running_client, running_server, server_config, wait_until

from muxtunnel.client import Client, FatalError, ServiceState
from muxtunnel.client._session import Control
from muxtunnel.model import GroupSpec, ServiceSpec

pytestmark = pytest.mark.anyio
WAIT_S = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def member(name: str, group: str = "web") -> ServiceSpec:
    return ServiceSpec(name, "tcp", "127.0.0.1", 9, group=GroupSpec(group))


async def test_same_names_from_two_processes_get_two_ids() -> None:
    async with running_server(server_config()) as server:
        assert server.port is not None
        config = client_config(server.port, member("web-a"))
        with anyio.fail_after(WAIT_S):
            async with running_client(config), running_client(config):
                group = server.groups.by_name["web"].group
                host = socket.gethostname()
                assert [m.member_id for m in group.members] == [
                    f"{host}/web-a", f"{host}/web-a#2"
                ]  # fmt: skip


async def test_a_reconnect_of_the_same_process_takes_its_place_back() -> None:
    async with running_server(server_config()) as server:
        assert server.port is not None
        config = client_config(server.port, member("web-a"))
        with anyio.fail_after(WAIT_S):
            async with running_client(config) as first:
                group = server.groups.by_name["web"].group
                (old,) = group.members
                # The same process, on a second session (its first not yet noticed as gone):
                twin = Client(config)
                twin.instance = first.instance
                async with anyio.create_task_group() as tg:
                    tg.start_soon(twin.run)
                    await wait_until(lambda: twin.online)
                    (new,) = group.members
                    assert new.member_id == old.member_id and new is not old
                    assert new.handle.session is not old.handle.session
                    # The old registration was closed, and its client told.
                    await wait_until(lambda: first.services["web-a"].public is None)
                    tg.cancel_scope.cancel()


async def test_a_member_leaving_closes_an_empty_group_and_frees_its_port() -> None:
    async with running_server(server_config()) as server:
        assert server.port is not None
        config = client_config(server.port, member("web-a"))
        with anyio.fail_after(WAIT_S):
            async with running_client(config) as client:
                port = server.groups.by_name["web"].port
                assert ("tcp", port) in server.registry.ports
                await client.apply_config(client_config(server.port, member("other", "x")))
                await wait_until(lambda: "web" not in server.groups.by_name)
                assert ("tcp", port) not in server.registry.ports


def test_a_member_refuses_a_server_without_groups() -> None:
    """An older server lists no FEATURE_GROUPS: registering a member there would make it a
    plain service (the server ignores the fields it does not know), so the client refuses."""
    control = Control(None, client_config(1), b"", lambda state: None)  # type: ignore[arg-type]
    control.features = ()
    with pytest.raises(FatalError, match="does not take load-balancing groups"):
        control._membership(ServiceState(member("web-a")))
    assert control._membership(ServiceState(ServiceSpec("db", "tcp", "127.0.0.1", 9))) == {}


def test_a_members_status_row_says_its_group_and_health() -> None:
    state = ServiceState(member("web-a"))
    row = state.row(None)
    assert (row.group, row.health) == ("web", None)  # no health check: nothing to say
    assert ServiceState(ServiceSpec("db", "tcp", "127.0.0.1", 9)).row(None).group is None
