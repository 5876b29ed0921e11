"""Resumable `Session`s: streams go on byte-exact over a new carrier after the old one broke.

Two sessions over a memory or a loopback TCP carrier echo seeded random bytes on several
streams while a task breaks the carrier at random moments (an abort: whatever was in flight is
lost, both ends see the loss). Each time, both sessions suspend; the test hands each a new
carrier and the other side's received count, as `muxtunnel`'s resume handshake does. The
echoes must come back byte-exact and no stream may see an error. Further tests: the resume
timeout, a wrong count, a peer that said GoAway, a peer that closed its carrier in order (EOF
ends the session), detaching a carrier that still works.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from mux import MuxConfig, MuxStream, Session, SessionClosed
from mux.testing import echo_streams, memory_stream_pair, tcp_stream_pair

pytestmark = pytest.mark.anyio

KIB, MIB = 1024, 1024 * 1024
#: Small so a test crosses many receipts and the log's cap; keepalive off (tests cut on purpose).
CONFIG = MuxConfig(
    enable_keepalive=False,
    replay_budget_bytes=2 * MIB,
    receipt_every_bytes=64 * KIB,
    resume_timeout_s=10.0,
)

Carrier = anyio.abc.ByteStream


@dataclass
class Link:
    """Two resumable sessions and a way to give them a new carrier."""

    client: Session
    server: Session
    connect: Callable[[], Awaitable[tuple[Carrier, Carrier]]]
    #: The carriers in use now (client's end, server's end).
    ends: tuple[Carrier, Carrier]
    resumes: int = 0
    stalls_s: list[float] = field(default_factory=list)

    async def cut(self) -> None:
        """Break the carrier as a reset would: both ends fail, what was in flight is lost."""
        client_end = self.ends[0]
        abort = getattr(client_end, "abort", None)
        if callable(abort):
            abort()  # the memory carrier
        else:  # anyio's TCP stream: linger 0, so closing it sends RST (a FIN would end it)
            raw = client_end.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await client_end.aclose()

    async def reconnect(self) -> None:
        """Both sessions lost their carrier: resume both on a new one."""
        started = anyio.current_time()
        with anyio.fail_after(10):
            await self.client.wait_carrier_lost()
            await self.server.wait_carrier_lost()
        left, right = await self.connect()
        self.ends = (left, right)
        client_count, server_count = self.client.bytes_received, self.server.bytes_received
        await self.client.resume(left, server_count)
        await self.server.resume(right, client_count)
        self.resumes += 1
        self.stalls_s.append(anyio.current_time() - started)


@asynccontextmanager
async def resumable_link(kind: str, config: MuxConfig = CONFIG) -> AsyncIterator[Link]:
    async with AsyncExitStack() as stack:

        async def connect() -> tuple[Carrier, Carrier]:
            if kind == "memory":
                return memory_stream_pair(256 * KIB)
            left, right = await stack.enter_async_context(tcp_stream_pair())
            return left, right

        left, right = await connect()
        client = await stack.enter_async_context(
            Session(left, client=True, config=config, resumable=True)
        )
        server = await stack.enter_async_context(
            Session(right, client=False, config=config, resumable=True)
        )
        client.enable_resume()
        server.enable_resume()
        yield Link(client, server, connect, (left, right))


async def echo_check(stream: MuxStream, size: int, seed: int) -> None:
    """Send `size` seeded random bytes and check the echo is exactly them."""
    payload = random.Random(seed).randbytes(size)
    got = bytearray()

    async def read() -> None:
        while True:
            try:
                got.extend(await stream.receive())
            except anyio.EndOfStream:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        view = memoryview(payload)
        while view:
            await stream.send(bytes(view[: 16 * KIB]))
            view = view[16 * KIB :]
        await stream.send_eof()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest(), (
        len(got), size,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["memory", "tcp"])
async def test_echoes_survive_random_cuts(kind: str) -> None:
    async with resumable_link(kind) as link, anyio.create_task_group() as servers:
        servers.start_soon(echo_streams, link.server, servers)
        rng = random.Random(11)
        done = anyio.Event()

        async def breaker() -> None:
            """Cut at random points of the transfer: after 0.1 to 1.5 MiB more arrived."""
            while not done.is_set():
                mark = link.client.bytes_received + rng.randint(100 * KIB, 1536 * KIB)
                while link.client.bytes_received < mark:
                    await anyio.sleep(0.0005)
                    if done.is_set():
                        return
                await link.cut()
                await link.reconnect()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(breaker)
                async with anyio.create_task_group() as echoes:
                    for i, size in enumerate([8 * MIB, 2 * MIB, 64 * KIB, 1]):
                        stream = await link.client.open_stream()
                        echoes.start_soon(echo_check, stream, size, i)
                done.set()
        assert link.resumes >= 3, link.resumes
        for session in (link.client, link.server):
            assert not session.closed
            assert session.resumes == link.resumes
            assert session.replay_peak_bytes <= CONFIG.replay_budget_bytes + 80 * KIB
        servers.cancel_scope.cancel()


async def test_a_stream_opened_while_suspended_goes_through_after_the_resume() -> None:
    async with resumable_link("memory") as link, anyio.create_task_group() as servers:
        servers.start_soon(echo_streams, link.server, servers)
        await link.cut()
        with anyio.fail_after(5):
            await link.client.wait_carrier_lost()
        assert link.client.suspended
        stream = await link.client.open_stream(b"opened while the carrier was down")
        await link.reconnect()
        with anyio.fail_after(5):
            assert await stream.receive() == b"opened while the carrier was down"
        servers.cancel_scope.cancel()


async def test_no_new_carrier_within_the_timeout_ends_the_session() -> None:
    config = CONFIG.replace(resume_timeout_s=0.3)
    async with resumable_link("memory", config) as link, anyio.create_task_group() as servers:
        servers.start_soon(echo_streams, link.server, servers)
        stream = await link.client.open_stream(b"x")
        with anyio.fail_after(5):
            assert await stream.receive() == b"x"
        await link.cut()
        started = anyio.current_time()
        with anyio.fail_after(5):
            await link.client.wait_closed()
        # uvloop's clock moves in milliseconds: 0.300 s measured can be 0.29999... as a float
        assert anyio.current_time() - started >= 0.3 - 0.002
        assert "resume_timeout_s" in (link.client.close_reason or "")
        with pytest.raises(SessionClosed):
            await stream.send(b"more")
        with pytest.raises(SessionClosed):
            await link.client.wait_carrier_lost()
        servers.cancel_scope.cancel()


async def test_a_count_we_cannot_replay_from_ends_the_session() -> None:
    async with resumable_link("memory") as link:
        await link.cut()
        with anyio.fail_after(5):
            await link.client.wait_carrier_lost()
        left, right = memory_stream_pair()
        impossible = link.client.conn.bytes_sent + 1  # type: ignore[operator]
        with pytest.raises(SessionClosed, match="cannot resume"):
            await link.client.resume(left, impossible)
        assert link.client.closed
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await right.receive()  # the new carrier was closed too


async def test_a_peer_that_said_goaway_is_not_waited_for() -> None:
    async with resumable_link("memory") as link:
        await link.client.aclose()  # GoAway, then the carrier closes
        with anyio.fail_after(5):
            await link.server.wait_closed()
        assert not link.server.suspended


async def test_a_carrier_closed_in_order_ends_the_session() -> None:
    """EOF without GoAway (the peer's process died; its kernel sent FIN): no suspension."""
    async with resumable_link("tcp") as link:
        await link.ends[0].aclose()  # a plain close: FIN
        with anyio.fail_after(5):
            await link.server.wait_closed()
        assert not link.server.suspended
        assert link.server.close_reason == "the peer closed the connection"


async def test_detach_moves_a_working_session_to_another_carrier() -> None:
    """Rule 1 of `_resumable.py`: once detached, the counts are final; a session whose carrier
    still works is moved without losing a byte, while a bulk echo runs."""
    async with resumable_link("tcp") as link, anyio.create_task_group() as servers:
        servers.start_soon(echo_streams, link.server, servers)

        done = anyio.Event()

        async def move() -> None:
            while not done.is_set():
                await anyio.sleep(0.005)
                if link.client.conn.replay_bytes and not done.is_set():  # bytes in flight
                    link.client.detach("moving to another path")
                    link.server.detach("the client moved")
                    await link.reconnect()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(move)
                await echo_check(await link.client.open_stream(), 16 * MIB, 3)
                done.set()
        assert link.resumes >= 3, link.resumes
        servers.cancel_scope.cancel()


async def test_detach_can_hold_the_old_carrier_until_the_peer_moved() -> None:
    """`detach(close_after=event)`: the old carrier stays open (no FIN the peer would take for
    the session's end) until the event is set, then closes; the peer, still reading it, sees
    its end only then, and has not ended the session before."""
    async with resumable_link("tcp") as link:
        moved = anyio.Event()
        link.client.detach("moving to another path", close_after=moved)
        await anyio.sleep(0.2)  # the old carrier would have closed by now without `moved`
        assert not link.server.suspended and not link.server.closed
        link.server.detach("the client moved")  # as the server does when told of the move
        moved.set()
        left, right = await link.connect()
        client_count, server_count = link.client.bytes_received, link.server.bytes_received
        await link.client.resume(left, server_count)
        await link.server.resume(right, client_count)
        with anyio.fail_after(5):
            await link.client.ping()
        assert not link.server.closed and not link.client.closed


async def test_a_plain_session_still_ends_with_its_carrier() -> None:
    """Without `enable_resume` a resumable session ends at the first loss, as before."""
    left, right = memory_stream_pair()
    async with (
        Session(left, client=True, config=CONFIG, resumable=True) as client,
        Session(right, client=False, config=CONFIG) as server,
    ):
        left.abort()
        with anyio.fail_after(5):
            await client.wait_closed()
            await server.wait_closed()
        assert not client.suspended
