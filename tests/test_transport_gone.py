"""A connection that is gone before we look at it: every socket helper answers, none raises.

Under uvloop anyio's `extra()` of a closed socket stream raises AttributeError (its raw socket
is None; it calls `getpeername` on it); under asyncio the attribute is missing or the socket's
fd is -1. A peer that connects and closes at once gets us there (`connect` itself is tested in
test_transport_connect.py).
"""

from __future__ import annotations

import asyncio
import socket

import anyio
import anyio.abc
import pytest
import testenv

from mux import MuxConfig, peer_name
from mux._carrier import ReceiveBuffer, tune_carrier_socket
from muxtunnel.sockets import connect_protocol
from muxtunnel.transport import local_address, peer_address
from muxtunnel.vhost.upstream import Visitor


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


@pytest.mark.anyio
async def test_helpers_on_a_closed_socket_stream() -> None:
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.aclose()
        tune_carrier_socket(stream, MuxConfig())
        ReceiveBuffer.of(stream, MuxConfig())
        assert peer_address(stream) is None
        assert local_address(stream) is None
        assert Visitor.of(stream).host == "unknown"
        await listener.aclose()


@pytest.mark.anyio
async def test_peer_address_of_an_open_stream_is_the_peer_without_asking_the_kernel() -> None:
    """`peer_address` reads the address the transport noted at the accept (`mux.peer_name`),
    and gives the same answer as asking the kernel."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        inner = listener.listeners[0]
        assert isinstance(inner, anyio.abc.SocketListener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            accepted = await inner.accept()
            ours = client.extra(anyio.abc.SocketAttribute.local_address)
            assert peer_name(accepted) == ours
            assert peer_address(accepted) == ours
            assert accepted.extra(anyio.abc.SocketAttribute.remote_address) == ours
            await accepted.aclose()
        await listener.aclose()


@pytest.mark.anyio
async def test_a_relay_dial_has_nodelay_on() -> None:
    """`connect_protocol` leaves TCP_NODELAY to the loop's transport (set by asyncio's and by
    uvloop's): a 64 B reply must not wait for Nagle."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        transport = await connect_protocol("127.0.0.1", port, asyncio.Protocol())
        try:
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            transport.close()
            await listener.aclose()
