"""Resumable sessions end to end, in process: a visitor's connection survives a broken carrier.

`up` reaches `listen` through a relay (`bench.delayproxy.DelayProxy`, no delay) that the tests
break on purpose: `reset_connections()` resets the carrier both ways, as a middlebox would,
and closing the relay makes the server unreachable. A visitor echoes seeded random bytes
through the tunnel meanwhile and must get every one back, in order, with no error; the
client must not have registered anew (its session was resumed, not replaced).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from bench.delayproxy import DelayProxy
from mux import MuxConfig
from muxtunnel import resume
from muxtunnel.auth import new_nonce
from muxtunnel.client import Client
from muxtunnel.control import AUTH_FAILED, Error
from muxtunnel.model import ClientTls, ServerTls
from muxtunnel.server import Server
from muxtunnel.web.metrics import StatusCollector, render

from .helpers import (
    WAIT_S,
    client_config,
    echo_service,
    make_pair,
    public_port,
    running_client,
    running_server,
    server_config,
    tcp,
    wait_until,
)

pytestmark = pytest.mark.anyio

MIB = 1 << 20
#: Quick keepalive: a carrier that died silently is noticed within a second or two.
FAST = MuxConfig(keepalive_interval_s=0.5, keepalive_timeout_s=1.0)


@asynccontextmanager
async def relay(port: int) -> AsyncIterator[DelayProxy]:
    async with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port)) as proxy:
        yield proxy


async def echo_through(port: int, size: int, seed: int, cut: anyio.Event | None = None) -> None:
    """Echo `size` seeded random bytes through the public `port`; set `cut` halfway."""
    payload = random.Random(seed).randbytes(size)
    got = bytearray()
    visitor = await anyio.connect_tcp("127.0.0.1", port)

    async def read() -> None:
        while len(got) < size:
            got.extend(await visitor.receive())
            if cut is not None and len(got) >= size // 2:
                cut.set()

    async with visitor, anyio.create_task_group() as tg:
        tg.start_soon(read)
        for offset in range(0, size, 64 * 1024):
            await visitor.send(payload[offset : offset + 64 * 1024])
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_visitor_survives_a_reset_carrier(tls: bool, tmp_path: Path) -> None:
    extra: dict[str, object] = {}
    client_extra: dict[str, object] = {}
    if tls:
        pair = make_pair(tmp_path, "server")
        extra["tls"] = ServerTls(pair.cert, pair.key)
        client_extra["tls"] = ClientTls(fingerprints=(pair.fingerprint.split(":", 1)[1],))
    async with (
        echo_service() as echo,
        running_server(server_config(mux=FAST, **extra)) as server,
        relay(server.port or 0) as proxy,
    ):
        assert proxy.address is not None
        config = client_config(proxy.address[1], tcp("web", echo), mux=FAST, **client_extra)
        async with running_client(config) as client:
            cut = anyio.Event()
            with anyio.fail_after(WAIT_S * 2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(echo_through, public_port(client, "web"), 8 * MIB, 1, cut)
                    await cut.wait()
                    assert proxy.reset_connections() == 1
                await wait_until(lambda: client.resume_stats.resumes == 1)
            assert client.reconnects == 0  # resumed, never registered anew
            assert server.resumable.resumes == 1
            status = client.status()
            assert status.resume.resumes == 1 and status.servers[0].resumes == 1
            server_row = server.status().sessions[0]
            assert (server_row.resumes, server_row.suspended) == (1, False)
            for target in (client, server):
                text = render(StatusCollector(target.status)).decode()
                assert "muxtunnel_resumes_total 1.0" in text, text
                assert "muxtunnel_suspended_sessions 0.0" in text, text
            assert (
                'muxtunnel_server_connected{server="'
                in render(StatusCollector(client.status)).decode()
            )


async def test_a_silent_carrier_is_noticed_and_resumed() -> None:
    """A blackholed relay passes nothing, not even a reset: the keepalive notices, the session
    suspends on both sides, and the client resumes through the relay once it works again."""
    async with (
        echo_service() as echo,
        running_server(server_config(mux=FAST)) as server,
        relay(server.port or 0) as proxy,
    ):
        assert proxy.address is not None
        config = client_config(proxy.address[1], tcp("web", echo), mux=FAST)
        async with running_client(config) as client:
            port = public_port(client, "web")
            visitor = await anyio.connect_tcp("127.0.0.1", port)
            async with visitor:
                await visitor.send(b"before")
                with anyio.fail_after(WAIT_S):
                    assert await visitor.receive() == b"before"
                proxy.blackhole = True
                session = client.session
                assert session is not None
                await wait_until(lambda: session.suspended)
                proxy.blackhole = False
                proxy.reset_connections()  # the old route's connection is gone for good
                await visitor.send(b"after")
                with anyio.fail_after(WAIT_S):
                    assert await visitor.receive() == b"after"
            assert client.resume_stats.resumes >= 1 and client.reconnects == 0


async def test_no_carrier_within_resume_timeout_s_ends_the_session_and_up_registers_anew() -> None:
    short = FAST.replace(resume_timeout_s=1.0)
    async with (
        echo_service() as echo,
        running_server(server_config(mux=short)) as server,
    ):
        proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", server.port or 0))
        address = await proxy.start()
        config = client_config(address[1], tcp("web", echo), mux=short)
        async with running_client(config) as client:
            visitor = await anyio.connect_tcp("127.0.0.1", public_port(client, "web"))
            await visitor.send(b"x")
            with anyio.fail_after(WAIT_S):
                assert await visitor.receive() == b"x"
            proxy.blackhole = True  # a dead route: every resume attempt hangs (no refusal)
            try:
                with anyio.fail_after(WAIT_S):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        while True:
                            await visitor.receive()  # the visitor is cut once the time is up
                assert server.resumable.failures["expired"] == 1
                await wait_until(lambda: client.reconnects >= 1)
                proxy.blackhole = False
                await wait_until(lambda: client.online)
            finally:
                await proxy.close()


async def test_a_server_that_refuses_connections_is_not_waited_for() -> None:
    """Nothing listens any more where the server was (its process is gone, and the session
    with it): up gives the resume up at once and registers afresh when a server is back."""
    async with echo_service() as echo, running_server(server_config(mux=FAST)) as server:
        proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", server.port or 0))
        address = await proxy.start()
        config = client_config(address[1], tcp("web", echo), mux=FAST)
        async with running_client(config) as client:
            await proxy.close()  # connections refused from now on
            await wait_until(lambda: client.resume_stats.failures["server_gone"] == 1)
            assert client.reconnects >= 1 and not client.online
            proxy = DelayProxy(address, ("127.0.0.1", server.port or 0))
            await proxy.start()
            try:
                await wait_until(lambda: client.online)
            finally:
                await proxy.close()


async def test_a_restarted_listen_refuses_the_resume_and_up_registers_anew() -> None:
    async with echo_service() as echo:
        config = server_config(mux=FAST)
        first = Server(config)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            assert first.port is not None
            config = server_config(mux=FAST, bind_port=first.port)
            async with relay(first.port) as proxy:
                assert proxy.address is not None
                client_cfg = client_config(proxy.address[1], tcp("web", echo), mux=FAST)
                async with running_client(client_cfg) as client:
                    tg.cancel_scope.cancel()  # `listen` dies: its state is gone
                    await anyio.sleep(0.1)
                    async with running_server(config) as second:
                        proxy.reset_connections()
                        await wait_until(lambda: client.reconnects >= 1 and client.online)
                        assert client.resume_stats.failures[resume.UNKNOWN_SESSION] >= 1
                        assert second.resumable.failures["unknown_session"] >= 1
                        await echo_through(public_port(client, "web"), 1000, 3)


async def attempt_resume(port: int, session_id: bytes, key: bytes) -> resume.HandshakeMessage:
    """A resume handshake with `key`, by hand: what the server answers the proof."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        nonce = new_nonce()
        await resume.send(stream, resume.ResumeHello(session_id, nonce), magic=True)
        challenge = await resume.receive(stream)
        if not isinstance(challenge, resume.ResumeChallenge):
            return challenge
        proof = resume.proof(key, "client", session_id, nonce, challenge.server_nonce, b"")
        await resume.send(stream, resume.Attach(proof))
        return await resume.receive(stream)


async def test_a_wrong_ticket_is_refused_and_the_session_goes_on() -> None:
    async with (
        echo_service() as echo,
        running_server(server_config()) as server,
        running_client(client_config(server.port or 0, tcp("web", echo))) as client,
    ):
        assert server.port is not None
        ticket = client_ticket(client)
        with anyio.fail_after(WAIT_S):
            wrong = await attempt_resume(server.port, ticket.session_id, bytes(32))
            assert isinstance(wrong, Error) and wrong.code == AUTH_FAILED
            unknown = await attempt_resume(server.port, bytes(16), ticket.key)
            assert isinstance(unknown, Error) and unknown.code == resume.UNKNOWN_SESSION
            await echo_through(public_port(client, "web"), 100_000, 4)  # untouched
            right = await attempt_resume(server.port, ticket.session_id, ticket.key)
            assert isinstance(right, resume.Attached)  # the right key is let in
        assert server.refusals["resume_auth_failed"] == 1
        assert server.refusals["resume_unknown_session"] == 1
        assert server.status().resume.failures == {"auth_failed": 1, "unknown_session": 1}
        assert client.session is not None and not client.session.closed


def client_ticket(client: Client) -> resume.Ticket:
    control = client._control
    assert control is not None and control.ticket is not None
    return control.ticket


async def test_an_old_client_or_resume_off_keeps_nothing() -> None:
    """A client that does not ask (or a server that does not resume) gets a plain session:
    nothing is kept for a replay, and a broken carrier ends it as before."""
    async with (
        echo_service() as echo,
        running_server(server_config(resume=False)) as server,
        running_client(client_config(server.port or 0, tcp("web", echo))) as client,
    ):
        session = client.session
        assert session is not None
        assert not session.resume_enabled and session.replay_bytes == 0
        assert all(not c.session.resume_enabled for c in server.sessions.values())


async def test_a_suspended_sessions_service_goes_to_a_new_registration() -> None:
    """The client went without a word (its route is dead, as after a crash or a power cut) and
    the server's side of its session waits for a resume: a new client proving the same token
    takes the service over at once (not after resume_timeout_s), on the same public port."""
    async with (
        echo_service() as echo,
        running_server(server_config(mux=FAST)) as server,
        relay(server.port or 0) as proxy,
    ):
        assert proxy.address is not None
        async with running_client(
            client_config(proxy.address[1], tcp("web", echo), mux=FAST)
        ) as first:
            port = public_port(first, "web")
            proxy.blackhole = True
            await wait_until(lambda: server.status().resume.suspended == 1)
            direct = client_config(server.port or 0, tcp("web", echo, remote_port=port), mux=FAST)
            async with running_client(direct) as second:
                assert public_port(second, "web") == port
                await echo_through(port, 64 * 1024, 5)  # byte-exact, checked inside
            assert server.status().resume.suspended == 1  # the old session itself still waits
