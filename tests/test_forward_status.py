"""`muxtunnel.forward` (visitor tracking, the per-visitor barrier) and `muxtunnel.status` rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest

from muxtunnel.client import ServiceState
from muxtunnel.forward import Visitors, guarded
from muxtunnel.model import ServiceSpec
from muxtunnel.status import (
    ClientStatus,
    ConnectionRow,
    ServerStatus,
    ServiceRow,
    SessionRow,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_service_tracker_counts_in_its_parent_too() -> None:
    server = Visitors()
    web, db = Visitors(parent=server), Visitors(parent=server)
    with web.track(), web.track(), db.track():
        assert (web.count, db.count, server.count) == (2, 1, 3)
    assert (web.count, db.count, server.count) == (0, 0, 0)
    assert (web.total, db.total, server.total) == (2, 1, 3)


@pytest.mark.anyio
async def test_drained_waits_for_the_last_visitor_on_an_event() -> None:
    visitors = Visitors()
    with anyio.fail_after(1):
        await visitors.drained()  # none in flight: at once
    done = anyio.Event()

    async def visitor(release: anyio.Event) -> None:
        with visitors.track():
            await release.wait()

    async def drain() -> None:
        await visitors.drained()
        done.set()

    first, second = anyio.Event(), anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(visitor, first)
            tg.start_soon(visitor, second)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            first.set()
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # one visitor is left
            second.set()
            await done.wait()
    assert visitors.count == 0


class _Stream(anyio.abc.ByteStream):
    """Records how it was closed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.calls.append("aclose")

    def reset(self) -> None:
        self.calls.append("reset")

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


@pytest.mark.anyio
async def test_a_bug_in_one_visitor_is_logged_and_aborts_it_only() -> None:
    stream = _Stream()

    async def buggy() -> None:
        raise RuntimeError("bug")

    await guarded(buggy(), stream, service="web")  # does not raise
    assert stream.calls == ["reset", "aclose"]
    fine = _Stream()

    async def handler() -> None:
        pass

    await guarded(handler(), fine)
    assert fine.calls == []


def test_status_documents_keep_their_keys() -> None:
    """`/api/v1/status` is read by `muxtunnel status` of other versions: keys only grow."""
    session = SessionRow(1, "10.0.0.1:5000", 2.5, 0.0123, 3, ("web",))
    service = ServiceRow("web", "tcp", "0.0.0.0:8080", 1, 4, 10, 20, session=1)
    connection = ConnectionRow("web", "10.0.0.2:6000", 1.0, 5, 6)
    server = ServerStatus(
        "1", "0.0.0.0:7835", None, 9.0, 0, (session,), (service,), (connection,)
    ).to_dict()
    assert set(server) == {
        "role", "version", "bind", "tls", "uptime_s", "auth_failures", "sessions", "services",
        "connections", "web", "refusals", "groups", "rate_limits", "resume",
    }  # fmt: skip
    assert server["sessions"] == [
        {"id": 1, "peer": "10.0.0.1:5000", "age_s": 2.5, "rtt_ms": 12.3, "streams": 3,
         "services": ["web"], "suspended": False, "resumes": 0, "role": "client"}
    ]  # fmt: skip
    assert server["resume"] == {
        "resumes": 0, "failures": {}, "suspended": 0, "replay_bytes": 0, "replay_peak_bytes": 0
    }  # fmt: skip
    assert set(server["services"][0]) == {
        "name", "type", "public", "session", "connections", "bytes_in", "bytes_out",
        "compression", "limits", "udp_dropped",
    }  # fmt: skip
    assert server["connections"] == [
        {"service": "web", "peer": "10.0.0.2:6000", "age_s": 1.0, "bytes_in": 5, "bytes_out": 6}
    ]
    client = ClientStatus("1", "server:7835", 2, (session,), (service,)).to_dict()
    assert set(client) == {
        "role", "version", "server", "connected", "rtt_ms", "reconnects", "services",
        "connections", "refusals", "resume", "servers", "command",
    }  # fmt: skip
    assert (client["role"], client["connected"], client["rtt_ms"]) == ("client", True, 12.3)
    assert set(client["services"][0]) == {
        "name", "type", "local", "public", "connections", "bytes_in", "bytes_out", "compression",
    }  # fmt: skip
    offline = ClientStatus("1", "server:7835", 0).to_dict()
    assert (offline["connected"], offline["rtt_ms"]) == (False, None)


def test_tables_show_open_tcp_connections_but_udp_flows_so_far() -> None:
    tcp = ServiceRow("web", "tcp", None, open_connections=2, connections_total=9)
    udp = ServiceRow("dns", "udp", None, open_connections=0, connections_total=7)
    assert (tcp.connections, udp.connections) == (2, 7)


def test_client_udp_rows_count_bytes_towards_the_service_as_in() -> None:
    state = ServiceState(ServiceSpec("dns", "udp", "127.0.0.1", 53))
    state.udp.bytes_out = 100  # datagrams the client delivered to the local service
    state.udp.bytes_in = 7  # and the replies it sent back into the tunnel
    state.udp.flows_opened = 3
    row = state.row(None)
    assert (row.bytes_in, row.bytes_out, row.connections, row.local) == (100, 7, 3, "127.0.0.1:53")
    assert row.udp_dropped == {"oversize": 0, "backpressure": 0}


def test_status_shows_what_compression_saved() -> None:
    import io

    from rich.console import Console

    from muxtunnel.statusview import print_status

    zipped = ServiceRow("logs", "tcp", "h:1", compression="zstd", local="l:1",
                        carrier_bytes={"plain": 2 * 1024 * 1024, "compressed": 650 * 1024})
    plain = ServiceRow("raw", "tcp", "h:2", compression="zstd", local="l:2")  # no visitor yet
    document = ClientStatus("1", "server:7835", 0, services=(zipped, plain)).to_dict()
    out = io.StringIO()
    print_status(document, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "zstd 32% of 2.0 MiB" in text, text
    (raw,) = [line for line in text.splitlines() if " raw " in line]
    assert "zstd" in raw and "%" not in raw, raw


def test_status_tables_show_private_services_and_visits() -> None:
    """`muxtunnel status` of a server with a private service, and of a `visit`."""
    from rich.console import Console

    from muxtunnel.statusview import render_status

    def text(document: dict[str, object]) -> str:
        console = Console(width=200, record=True)
        console.print(render_status(document))
        return console.export_text()

    visitor = SessionRow(3, "10.0.0.9:4000", 1.0, None, 2, ("ssh",), role="visitor")
    private = ServiceRow("ssh", "tcp", "private", 1, 1, private=True, visitor_sessions=1)
    server = text(ServerStatus("1", "0.0.0.0:7835", None, 9.0, 0, (visitor,), (private,)).to_dict())
    assert "visits ssh" in server and "private, 1 visitor session(s)" in server
    served = ServiceRow("ssh", "tcp", "127.0.0.1:2222", local="ssh@t:7835", private=True,
                        provider_online=False)  # fmt: skip
    visit = ClientStatus("1", "t:7835", 0, (), (served,), command="visit").to_dict()
    assert visit["services"][0]["provider_online"] is False
    shown = text(visit)
    assert "muxtunnel visit" in shown and "127.0.0.1:2222 (provider offline)" in shown
