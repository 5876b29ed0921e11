"""The network seam for sockets driven as asyncio protocols (a visitor's `Relay`).

`muxtunnel.transport` hands out anyio streams; a relay drives its socket's asyncio transport
itself. What it needs of the socket layer is here, under the same rule: the socket layer's own
exceptions stop here (a failed connect is a `TransportError`, an abort never raises).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import anyio

from muxtunnel.specs import format_host_port
from muxtunnel.transport import CONNECT_TIMEOUT_S, TransportError

__all__ = ["abort_transport", "connect_protocol"]

#: SO_LINGER on, zero seconds: closing sends RST (as `transport.abort` does for streams).
_LINGER_ZERO = struct.pack("ii", 1, 0)


async def connect_protocol(
    host: str, port: int, protocol: asyncio.Protocol, *, timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncio.Transport:
    """A TCP connection to `host:port` driven by `protocol`; `TransportError` if it cannot be
    made in time. No anyio stream around it (its connect runs a task group per attempt).
    TCP_NODELAY is on: asyncio's and uvloop's transports set it (tests/test_sockets.py)."""
    loop = asyncio.get_running_loop()
    try:
        with anyio.fail_after(timeout_s):
            transport, _ = await loop.create_connection(lambda: protocol, host, port)
    except TimeoutError:
        where = format_host_port(host, port)
        raise TransportError(f"connecting to {where} timed out after {timeout_s} s") from None
    except OSError as exc:
        where = format_host_port(host, port)
        raise TransportError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    # TCP_NODELAY is on already: both asyncio's socket transports and uvloop's set it on
    # every TCP socket they make (setting it again cost three system calls per visitor).
    return transport


def abort_transport(transport: asyncio.Transport) -> None:
    """Close an asyncio socket transport so the peer sees a failure (RST). Never raises."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except (OSError, ValueError, AttributeError):  # gone already (see peer_address)
            pass
    transport.abort()
