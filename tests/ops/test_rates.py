"""Client-side byte counts follow what the visitor's side took, not what `up` buffered.

`up` reads a local service's reply as fast as the tunnel's window lets it; a slow visitor then
takes it over seconds. The panel's rates and the client's totals of live connections must
follow the visitor (issue: the panel showed 0 B/s during a download whose bytes had all left
the local service).
"""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest

from muxtunnel.client import Client
from muxtunnel.server import Server

from .helpers import WAIT_S, client_config, public_port, server_config, serving, tcp

pytestmark = pytest.mark.anyio

REPLY_BYTES = 8 * 1024 * 1024
#: The tunnel's initial stream window (yamux's 256 KiB, mux/SPEC.md).
WINDOW_BYTES = 256 * 1024


async def _bulk(stream: anyio.abc.SocketStream) -> None:
    """Local service: REPLY_BYTES at once, then wait for the visitor to leave."""
    try:
        await stream.send(b"d" * REPLY_BYTES)
        await stream.receive()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
        pass


def _out(rows: object, name: str) -> int:
    (row,) = [row for row in rows if row.name == name]  # type: ignore[attr-defined]
    return int(row.bytes_out)


async def test_client_counts_follow_a_stalled_visitor() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    local = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = Server(server_config())
    async with anyio.create_task_group() as tg, serving(server):
        tg.start_soon(listener.serve, _bulk)
        assert server.port is not None
        client = Client(client_config(server.port, tcp("bulk", local)))
        async with serving(client):
            port = public_port(client, "bulk")
            visitor = socket.socket()
            visitor.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            visitor.settimeout(WAIT_S)
            try:
                await anyio.to_thread.run_sync(visitor.connect, ("127.0.0.1", port))
                # The visitor takes nothing: buffers everywhere fill, then everything stops.
                last = -1
                with anyio.fail_after(WAIT_S):
                    while True:
                        await anyio.sleep(0.3)
                        server_out = _out(server.status().services, "bulk")
                        if server_out == last and server_out > 0:
                            break
                        last = server_out
                client_out = _out(client.status().services, "bulk")
                read_locally = sum(m.bytes_out for m in client.traffic["bulk"].live)
                # The server counts at the visitor's socket. The client read more from the local
                # service (the tunnel's window at least, and what waits for it)...
                ahead = read_locally - server_out
                assert ahead >= WINDOW_BYTES, (client_out, server_out, read_locally)
                # ...but is nearer the server's count than that: a sender knows the peer's window
                # only from its updates (at least half of it once it grew, mux/_window.py) and
                # credit comes back by the half window, so it may be off by about one window.
                off = abs(client_out - server_out)
                print(f"stalled visitor: server {server_out} B, client {client_out} B, "
                      f"read from the local service {read_locally} B")  # fmt: skip
                assert off < ahead, (client_out, server_out, read_locally)
                assert off <= max(ahead / 2, WINDOW_BYTES), (client_out, server_out, read_locally)
                # Once the visitor reads it all, the counts meet.
                got = 0
                with anyio.fail_after(WAIT_S):
                    while got < REPLY_BYTES:
                        got += len(await anyio.to_thread.run_sync(visitor.recv, 1 << 20))
                with anyio.fail_after(WAIT_S):
                    while _out(client.status().services, "bulk") < REPLY_BYTES:
                        await anyio.sleep(0.05)
            finally:
                visitor.close()
        tg.cancel_scope.cancel()
