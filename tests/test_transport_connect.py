"""`muxtunnel.transport.connect`: a connection reset as it opens is a failed connect, not a crash.

Under uvloop a socket stream whose peer reset it before anyio wrapped it has no raw socket, and
asking for it fails with AttributeError. `up` resuming while its server restarted died of it.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from muxtunnel import transport
from muxtunnel.transport import TransportError


class GoneStream:
    """What anyio's uvloop socket stream looks like once the socket is gone."""

    def __init__(self) -> None:
        self.closed = False

    def extra(self, attribute: Any, default: Any = None) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'getpeername'")

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_a_connection_reset_as_it_opens_is_a_transport_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = GoneStream()

    async def connect_tcp(host: str, port: int, **options: Any) -> GoneStream:
        return stream

    monkeypatch.setattr(transport.anyio, "connect_tcp", connect_tcp)
    with anyio.fail_after(5), pytest.raises(TransportError, match="closed as it opened"):
        await transport.connect("127.0.0.1", 9)
    assert stream.closed
