"""A connection that is gone before we look at it: every socket helper answers, none raises.

Under uvloop anyio's `extra()` of a closed socket stream raises AttributeError (its raw socket
is None; it calls `getpeername` on it); under asyncio the attribute is missing or the socket's
fd is -1. A peer that connects and closes at once gets us there (`connect` itself is tested in
test_transport_connect.py).
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
import testenv

from mux import MuxConfig
from mux._carrier import ReceiveBuffer, tune_carrier_socket
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
