"""`UdpEndpoint.send_many`: runs of equal-sized datagrams go out in one system call each
(`UDP_SEGMENT`), and arrive as the datagrams they were, in order; a socket that cannot segment
sends them one by one."""

from __future__ import annotations

import errno
import sys

import anyio
import pytest

from muxtunnel.datagrams import open_udp

from .helpers import WAIT_S

pytestmark = pytest.mark.anyio

#: 70 of 1400 bytes (more than one send may carry), a shorter one that ends a run, a run of
#: 3, one alone of another size, an empty one.
DATAGRAMS = [
    *(bytes([i]) * 1400 for i in range(70)),
    b"s" * 500,
    *(bytes([i]) * 900 for i in range(3)),
    b"x" * 1200,
    b"",
]


async def _roundtrip(connected: bool, break_segments: bool = False) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    done = anyio.Event()

    def on_datagram(data: bytes, _: tuple[str, int]) -> None:
        got.append(data)
        if len(got) == len(DATAGRAMS):
            done.set()

    receiver = await open_udp(on_datagram, local=("127.0.0.1", 0))
    target = ("127.0.0.1", receiver.port)
    if connected:
        sender = await open_udp(lambda *_: None, remote=target)
    else:
        sender = await open_udp(lambda *_: None, local=("127.0.0.1", 0))
    if break_segments:

        class NoSegments:
            def sendmsg(self, *_: object) -> int:
                raise OSError(errno.EIO, "no checksum offload")

            def close(self) -> None:
                pass

        sender._gso = NoSegments()  # type: ignore[assignment]
    try:
        sent = sender.send_many(DATAGRAMS, None if connected else target)
        assert sent == len(DATAGRAMS)
        with anyio.fail_after(WAIT_S):
            await done.wait()
        return got, sender.segmented_sends
    finally:
        sender.close()
        receiver.close()


@pytest.mark.skipif(sys.platform != "linux", reason="UDP_SEGMENT is Linux's")
@pytest.mark.parametrize("connected", [True, False])
async def test_runs_go_in_one_send_each_and_arrive_whole(connected: bool) -> None:
    got, segmented = await _roundtrip(connected)
    assert got == DATAGRAMS
    # 64 + (6 and the short one) + 3: three sends; the odd sizes and the empty one alone.
    assert segmented == 3


async def test_a_socket_that_cannot_segment_sends_one_by_one() -> None:
    got, segmented = await _roundtrip(True, break_segments=True)
    assert got == DATAGRAMS
    assert segmented == 0
