"""The seam's UDP half (`muxtunnel.transport` is the TCP one): the sockets UDP services use.

Above this module there are `UdpEndpoint`s and `TransportError` (a bind or connect failed),
never the socket layer's own exceptions.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from muxtunnel.specs import format_host_port
from muxtunnel.transport import Address, TransportError, bind_error

__all__ = ["UDP_BUFFER_LIMIT_BYTES", "UdpEndpoint", "open_udp"]

#: Bytes a UDP socket may hold unsent before further datagrams to it are dropped.
UDP_BUFFER_LIMIT_BYTES = 1024 * 1024


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram
        self.closed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable and friends: UDP offers no delivery promise anyway

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class UdpEndpoint:
    """A UDP socket driven by a protocol callback; sends drop rather than queue without bound.

    Datagrams go through an asyncio datagram protocol rather than anyio's UDP sockets: each is
    handed to `on_datagram` from the loop's callback, with no task switch per datagram, which
    is what lets a Python process keep up with a fast UDP sender. (This needs the asyncio
    backend, which is what muxtunnel runs on.)
    """

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _DatagramProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def port(self) -> int:
        """The local port."""
        return int(self._transport.get_extra_info("sockname")[1])

    def send(self, datagram: bytes, address: Address | None = None) -> bool:
        """Send one datagram, or drop it (False) while the socket's buffer is full."""
        if not datagram:
            return self._send_empty(address)
        buffered: int = self._transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if buffered > UDP_BUFFER_LIMIT_BYTES:
            return False
        self._transport.sendto(datagram, address)
        return True

    def _send_empty(self, address: Address | None) -> bool:
        """A 0-byte datagram, straight to the socket: both asyncio's and uvloop's `sendto`
        silently discard empty data, yet a UDP service may use one (a keepalive, a probe).

        It may overtake datagrams the transport still buffers, which UDP allows. Like the
        transport, a full socket buffer drops it (False) and any other error (ICMP port
        unreachable, ...) counts it as sent, as `error_received` does for the others.
        """
        raw = self._transport.get_extra_info("socket")
        fd = raw.fileno() if raw is not None and not self._transport.is_closing() else -1
        if fd < 0:
            return False
        sock = socket.socket(fileno=fd)  # borrows the fd: detached below, never closed here
        try:
            if address is None:
                sock.send(b"")
            else:
                sock.sendto(b"", address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass
        finally:
            sock.detach()
        return True

    async def wait_closed(self) -> None:
        """Return once the socket is closed."""
        await self._protocol.closed.wait()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._transport.close()


async def open_udp(
    on_datagram: Callable[[bytes, Address], None],
    *,
    local: Address | None = None,
    remote: Address | None = None,
) -> UdpEndpoint:
    """Bind (`local`) or connect (`remote`) a UDP socket whose datagrams go to `on_datagram`.

    `TransportError` if the socket cannot be bound or connected.
    """
    loop = asyncio.get_running_loop()
    protocol = _DatagramProtocol(on_datagram)
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, local_addr=local, remote_addr=remote
        )
    except OSError as exc:
        if local is not None:
            raise TransportError(bind_error(local[0], local[1], "udp", exc)) from None
        where = format_host_port(remote[0], remote[1]) if remote is not None else "?"
        raise TransportError(f"cannot reach udp {where}: {exc.strerror or exc}") from None
    return UdpEndpoint(transport, protocol)
