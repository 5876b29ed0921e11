"""`BalancedStream` in process, over real mux sessions: the dial confirmation, the replay of
what the visitor sent to a second member when the first one's dial fails, and the bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.abc
import pytest

from mux import MuxConfig, MuxStream, Session
from mux.testing.pairs import session_pair
from muxtunnel import control
from muxtunnel.balance.group import Group
from muxtunnel.balance.settings import CircuitSettings, GroupSettings
from muxtunnel.compress import CompressedStream
from muxtunnel.forward import Visitors
from muxtunnel.server._balanced import REPLAY_LIMIT_BYTES, BalancedStream, DialFailed
from muxtunnel.server._registry import ActiveService, MemberHandle

pytestmark = pytest.mark.anyio
QUIET = MuxConfig(enable_keepalive=False)
WAIT_S = 10.0

#: How a fake member's client answers a visitor stream: it gets the stream after its header.
Behaviour = Callable[[MuxStream], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def confirm_and_echo(stream: MuxStream) -> None:
    await stream.send(control.DIAL_CONFIRMED)
    try:
        while True:
            await stream.send(await stream.receive())
    except anyio.EndOfStream:
        await stream.send_eof()


async def fail_dial(stream: MuxStream) -> None:
    stream.reset()


class Member:
    """One member: a session pair whose client side answers with `behaviour`."""

    def __init__(self, name: str, server: Session, client: Session, behaviour: Behaviour) -> None:
        self.name = name
        self.client = client
        self.behaviour = behaviour
        self.headers: list[control.VisitorHeader] = []
        service = ActiveService(name, "tcp", 0, 1, Visitors())
        self.handle = MemberHandle(server, service, name, "g", b"")

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                stream = await self.client.accept_stream()
                self.headers.append(await control.read_visitor_header(stream))
                tg.start_soon(self.behaviour, stream)


@asynccontextmanager
async def members(
    *behaviours: Behaviour,
) -> AsyncIterator[tuple[Group[MemberHandle], list[Member]]]:
    """A round-robin group of members answering as `behaviours` say."""
    group: Group[MemberHandle] = Group("g", GroupSettings(circuit=CircuitSettings(failures=100)))
    made = []
    async with AsyncExitStack() as stack:
        for index, behaviour in enumerate(behaviours):
            client, server = await stack.enter_async_context(session_pair("memory", QUIET))
            member = Member(f"m{index}", server, client, behaviour)
            group.add_member(member.name, member.handle)
            made.append(member)
        async with anyio.create_task_group() as tg:
            for member in made:
                tg.start_soon(member.serve)
            yield group, made
            tg.cancel_scope.cancel()


async def read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except anyio.EndOfStream:
        return data


async def test_a_confirmed_dial_carries_the_bytes_sent_before_it() -> None:
    async with members(confirm_and_echo) as (group, (member,)):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(group, ("192.0.2.1", 5000), None)
            assert await stream.start()
            await stream.send(b"early ")  # before the confirmation could have come
            await stream.send(b"bytes")
            await stream.send_eof()
            assert await read_all(stream) == b"early bytes"
            await stream.aclose()
        assert member.headers[0].confirm and member.headers[0].peer_host == "192.0.2.1"
        assert group.member("m0").open_visitors == 0
        assert group.snapshot(0).members[0].dial_failures_total == 0


async def test_a_failed_dial_is_replayed_whole_on_the_next_member() -> None:
    retries: list[int] = []
    async with members(fail_dial, confirm_and_echo) as (group, (_, good)):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(
                group, ("192.0.2.1", 5000), None, on_retry=lambda: retries.append(1)
            )
            assert await stream.start()
            payload = bytes(range(256)) * 64
            for offset in range(0, len(payload), 1000):  # some before the reset, some after
                await stream.send(payload[offset : offset + 1000])
            await stream.send_eof()
            assert await read_all(stream) == payload
            await stream.aclose()
        assert retries == [1] and stream.member is good.handle
        snapshot = {m.member_id: m for m in group.snapshot(0).members}
        assert snapshot["m0"].dial_failures_total == 1 and snapshot["m1"].picked_total == 1
        assert all(m.open_visitors == 0 for m in group.members)


async def test_a_visitor_whose_members_all_fail_sees_the_stream_fail() -> None:
    async with members(fail_dial, fail_dial, confirm_and_echo) as (group, _):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(group, ("192.0.2.1", 5000), None)
            assert await stream.start()
            await stream.send(b"x")
            with pytest.raises(DialFailed):
                await stream.receive()
            assert stream.failed
            with pytest.raises(DialFailed):
                await stream.send(b"y")
            stream.reset()
        # Two attempts, not three: the third member was never tried.
        assert [m.picked_total for m in group.snapshot(0).members] == [1, 1, 0]


async def test_no_member_at_all() -> None:
    async with members(fail_dial) as (group, _):
        group.set_health("m0", False)
        stream = BalancedStream(group, ("192.0.2.1", 5000), None)
        assert not await stream.start()


async def test_past_the_replay_limit_the_visitor_waits_for_the_confirmation() -> None:
    go = anyio.Event()

    async def slow(stream: MuxStream) -> None:
        await go.wait()
        await confirm_and_echo(stream)

    async with members(slow) as (group, _):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(group, ("192.0.2.1", 5000), None)
            assert await stream.start()
            await stream.send(b"a" * REPLAY_LIMIT_BYTES)  # fits: goes out at once
            sent = anyio.Event()
            received: list[bytes] = []

            async def more() -> None:
                await stream.send(b"b" * 10)
                sent.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(more)
                await anyio.sleep(0.1)
                assert not sent.is_set()  # held until the member confirms
                go.set()
                await sent.wait()
                await stream.send_eof()
                received.append(await read_all(stream))
            assert received == [b"a" * REPLAY_LIMIT_BYTES + b"b" * 10]
            await stream.aclose()


async def test_a_wrong_confirmation_byte_fails_without_a_retry() -> None:
    async def garbage(stream: MuxStream) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\n")

    async with members(garbage, confirm_and_echo) as (group, _):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(group, ("192.0.2.1", 5000), None)
            assert await stream.start()
            with pytest.raises(DialFailed):
                await stream.receive()
        assert [m.picked_total for m in group.snapshot(0).members] == [1, 0]


async def test_compressed_members_get_the_replay_compressed() -> None:
    async def compressed_echo(stream: MuxStream) -> None:
        await stream.send(control.DIAL_CONFIRMED)
        await confirm_and_echo_plain(CompressedStream(stream, 3))

    async def confirm_and_echo_plain(stream: anyio.abc.ByteStream) -> None:
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            await stream.send_eof()

    async with members(fail_dial, compressed_echo) as (group, (_, good)):
        good.handle.service.compression = "zstd"
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(group, ("192.0.2.1", 5000), None)
            assert await stream.start()
            await stream.send(b"hello " * 100)
            await stream.send_eof()
            assert await read_all(stream) == b"hello " * 100
            await stream.aclose()


async def test_a_preamble_goes_first_on_every_attempt() -> None:
    async def record(stream: MuxStream) -> None:
        await confirm_and_echo(stream)

    async with members(fail_dial, record) as (group, _):
        with anyio.fail_after(WAIT_S):
            stream = BalancedStream(
                group, ("192.0.2.1", 5000), None, preamble=lambda m: f"[{m.member_id}]".encode()
            )
            assert await stream.start()
            await stream.send(b"body")
            await stream.send_eof()
            assert await read_all(stream) == b"[m1]body"
            await stream.aclose()
