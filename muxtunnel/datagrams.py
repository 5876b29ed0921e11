"""The seam's UDP half (`muxtunnel.transport` is the TCP one): the sockets UDP services use.

Above this module there are `UdpEndpoint`s and `TransportError` (a bind or connect failed),
never the socket layer's own exceptions.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Literal

from muxtunnel.specs import format_host_port
from muxtunnel.transport import Address, TransportError, bind_error

__all__ = ["UDP_BUFFER_LIMIT_BYTES", "UdpEndpoint", "open_udp"]

#: Bytes a UDP socket may hold unsent before further datagrams to it are dropped.
UDP_BUFFER_LIMIT_BYTES = 1024 * 1024

#: Linux's UDP generic segmentation offload (`UDP_SEGMENT`, linux/udp.h; Linux 4.18+; the
#: standard library of Python 3.11 has no name for it): one `sendmsg` of several equal-sized
#: datagrams, cut into datagrams by the kernel. 32 datagrams of 1400 bytes to a loopback
#: socket: 1.4 us of sender CPU per datagram instead of 4.8 with one `send` each.
_UDP_SEGMENT = 103
#: At most this many datagrams in one `UDP_SEGMENT` send (the kernel's `UDP_MAX_SEGMENTS`: 64
#: before Linux 6.3, 128 since).
_GSO_MAX_SEGMENTS = 64
#: At most this many bytes in one `UDP_SEGMENT` send: one IPv4 datagram's largest payload
#: (65535 - 20 IP - 8 UDP header bytes); IPv6 allows as much.
_GSO_MAX_BYTES = 65507
#: A `UDP_SEGMENT` send failing with one of these means the socket or its route cannot do it
#: (no checksum offload, an old kernel, IPsec, datagrams bigger than the route's MTU): the
#: endpoint sends one datagram a call from then on.
_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_SEGMENT_SIZE = struct.Struct("=H")


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
        #: A second handle on the transport's socket for `UDP_SEGMENT` sends (None until the
        #: first batch; False once the socket turned out not to take them).
        linux = sys.platform == "linux"
        self._gso: socket.socket | Literal[False] | None = None if linux else False
        #: System calls that each sent several datagrams (`UDP_SEGMENT`).
        self.segmented_sends = 0

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

    def send_many(self, datagrams: Sequence[bytes], address: Address | None = None) -> int:
        """Send datagrams in order, runs of equal-sized ones in one system call where the kernel
        can cut them (`UDP_SEGMENT`); the number sent, the rest dropped (a full socket buffer)."""
        count = len(datagrams)
        if count == 1:  # the common case of request/response traffic: no batch to make
            return 1 if self.send(datagrams[0], address) else 0
        if self._gso is False:
            return self._send_each(datagrams, 0, address)
        transport = self._transport
        if transport.get_write_buffer_size() or transport.is_closing():  # type: ignore[attr-defined]
            return self._send_each(datagrams, 0, address)  # behind what the transport holds
        start = 0
        while start < count:
            size = len(datagrams[start])
            end = start + 1
            limit = min(count, start + _GSO_MAX_SEGMENTS, start + _GSO_MAX_BYTES // max(size, 1))
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and 0 < len(datagrams[end]) < size:
                end += 1  # the last datagram of a segmented send may be shorter
            if end - start < 2 or size == 0:
                if not self.send(datagrams[start], address):
                    return start
                start += 1
                continue
            sent = self._send_segmented(datagrams[start:end], size, address)
            if sent is None:
                return start + self._send_each(datagrams, start, address)
            start = end
        return count

    def _send_segmented(
        self, run: Sequence[bytes], size: int, address: Address | None
    ) -> bool | None:
        """One `UDP_SEGMENT` send of `run` (all `size` bytes but the last); None if it was not
        sent and the caller should send the datagrams one by one."""
        sock = self._gso
        if sock is None:
            raw = self._transport.get_extra_info("socket")
            if raw is None:
                self._gso = False
                return None
            sock = self._gso = socket.socket(fileno=os.dup(raw.fileno()))
            sock.setblocking(False)
        assert sock is not False  # send_many checked
        ancillary = [(socket.SOL_UDP, _UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
        try:
            if address is None:
                sock.sendmsg(run, ancillary)
            else:
                sock.sendmsg(run, ancillary, 0, address)
        except (BlockingIOError, InterruptedError):
            return None  # the transport buffers (or drops) them
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                self._gso = False
                sock.close()
                return None
            # ICMP port unreachable and friends: sent, as `error_received` counts them
        self.segmented_sends += 1
        return True

    def _send_each(self, datagrams: Sequence[bytes], start: int, address: Address | None) -> int:
        for index in range(start, len(datagrams)):
            if not self.send(datagrams[index], address):
                return index - start
        return len(datagrams) - start

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
        if self._gso:
            self._gso.close()
        self._gso = False
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
