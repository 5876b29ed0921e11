"""Empty UDP datagrams, in process: delivered both ways and counted on both sides."""

from __future__ import annotations

import anyio
import pytest

from muxtunnel.datagrams import open_udp
from muxtunnel.model import ServiceSpec

from .helpers import WAIT_S, client_config, running_client, running_server, server_config

pytestmark = pytest.mark.anyio


async def test_empty_datagrams_are_delivered_and_counted() -> None:
    replies: list[bytes] = []
    replied = anyio.Event()

    def echo(data: bytes, address: tuple[str, int]) -> None:
        service.send(data, address)

    def on_reply(data: bytes, _: tuple[str, int]) -> None:
        replies.append(data)
        if len(replies) == 2:
            replied.set()

    service = await open_udp(echo, local=("127.0.0.1", 0))
    spec = ServiceSpec("dgram", "udp", "127.0.0.1", service.port)
    try:
        async with running_server(server_config()) as server:
            assert server.port is not None
            async with running_client(client_config(server.port, spec)) as client:
                public = client.services["dgram"].public
                assert public is not None
                port = int(public.rsplit(":", 1)[1])
                visitor = await open_udp(on_reply, remote=("127.0.0.1", port))
                try:
                    assert visitor.send(b"")
                    with anyio.fail_after(WAIT_S):
                        while not replies:
                            await anyio.sleep(0.01)
                    assert visitor.send(b"")
                    with anyio.fail_after(WAIT_S):
                        await replied.wait()
                finally:
                    visitor.close()
                on_server = server.registry.by_name["dgram"].udp
                on_client = client.services["dgram"].udp
                assert (on_server.flows_opened, on_server.datagrams_in) == (1, 2)
                assert on_server.datagrams_out == 2
                assert (on_client.datagrams_out, on_client.datagrams_in) == (2, 2)
    finally:
        service.close()
    assert replies == [b"", b""]
