"""Node-to-node sessions in one process: the proof both ways, reuse, and what a wrong secret or
a garbage speaker gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
import structlog

from mux import MuxConfig, MuxStream, Session
from muxtunnel.framing import frame, receive_frame, unpack_map
from muxtunnel.log import Refusals
from muxtunnel.model import ClientTls, ServerTls
from muxtunnel.proxy import pipe
from muxtunnel.server._peers import (
    MAX_PROVING,
    PeerAcceptor,
    PeerLinks,
    PeerUnavailable,
    cluster_key,
)
from muxtunnel.tls import ServerTlsContext, connect_tls, generate_self_signed
from muxtunnel.transport import connect, listen_tcp, local_port

pytestmark = pytest.mark.anyio

log = structlog.get_logger("test")


@asynccontextmanager
async def acceptor(
    secret: str, received: list[tuple[str, bytes]], tls: ServerTlsContext | None = None
) -> AsyncIterator[tuple[int, Refusals]]:
    refusals = Refusals(log)

    async def on_stream(stream: MuxStream, peer: str) -> None:
        data = await stream.receive()
        received.append((peer, data))
        await stream.send(b"ack:" + data)
        await stream.send_eof()

    node = PeerAcceptor("a", cluster_key(secret), MuxConfig(), refusals, on_stream, tls)
    listener = await listen_tcp("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, node.serve_carrier, tg)
        yield local_port(listener), refusals
        tg.cancel_scope.cancel()
    await listener.aclose()


@asynccontextmanager
async def links(secret: str, tls: bool = False) -> AsyncIterator[tuple[PeerLinks, Refusals]]:
    refusals = Refusals(log)
    found = PeerLinks("b", cluster_key(secret), MuxConfig(), refusals, tls=tls)
    async with anyio.create_task_group() as tg:
        await tg.start(found.run)
        yield found, refusals
        tg.cancel_scope.cancel()


async def test_streams_ride_one_proven_session() -> None:
    received: list[tuple[str, bytes]] = []
    with anyio.fail_after(10):
        async with acceptor("s3cret", received) as (port, _), links("s3cret") as (peers, _):
            for n in range(5):
                stream = await peers.open("a", f"127.0.0.1:{port}", f"visitor {n}".encode())
                assert await stream.receive() == f"ack:visitor {n}".encode()
            assert peers.dials == 1  # one session, reused by every visitor
            assert peers.connected() == ["a"]
    assert received == [("b", f"visitor {n}".encode()) for n in range(5)]


async def test_wrong_secret_is_refused_both_ways() -> None:
    received: list[tuple[str, bytes]] = []
    with anyio.fail_after(10):
        async with acceptor("right", received) as (port, _):
            async with links("wrong") as (peers, dialled):
                with pytest.raises(PeerUnavailable, match="did not prove the cluster secret"):
                    await peers.open("a", f"127.0.0.1:{port}", b"visitor")
                assert dialled["cluster_peer_unreachable"] == 1
                # Within REDIAL_AFTER_S the next visitor fails at once, without a new dial.
                with pytest.raises(PeerUnavailable):
                    await peers.open("a", f"127.0.0.1:{port}", b"again")
                assert peers.dials == 1
    assert received == []


async def test_a_wrong_proof_and_garbage_are_counted_and_the_port_serves_on() -> None:
    received: list[tuple[str, bytes]] = []
    with anyio.fail_after(10):
        async with acceptor("right", received) as (port, refusals):
            sock = await connect("127.0.0.1", port)
            await sock.send(b"\x00" * 12 + b"not yamux at all")
            await sock.aclose()
            # A peer that answers the challenge with a proof made up (it lacks the secret).
            carrier = await connect("127.0.0.1", port)
            async with Session(carrier, client=True) as session:
                hello = frame({"kind": "peer_hello", "node": "x", "nonce": b"n" * 32})
                stream = await session.open_stream(hello)
                unpack_map(await receive_frame(stream))  # the challenge
                await stream.send(frame({"kind": "peer_proof", "tag": b"t" * 32}))
                with anyio.fail_after(5):
                    await session.wait_closed()
            assert refusals["cluster_peer_auth_failed"] == 2
            async with links("right") as (peers, _):
                stream = await peers.open("a", f"127.0.0.1:{port}", b"honest")
                assert await stream.receive() == b"ack:honest"
    assert received == [("b", b"honest")]


def tls_pair(tmp_path: Path, name: str) -> ServerTlsContext:
    cert, key, _ = generate_self_signed(["127.0.0.1"])
    (tmp_path / f"{name}.crt").write_bytes(cert)
    (tmp_path / f"{name}.key").write_bytes(key)
    return ServerTlsContext.load(
        ServerTls(str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
    )


async def test_over_tls_and_a_man_in_the_middle_is_refused(tmp_path: Path) -> None:
    """With TLS, the proof covers the acceptor's certificate: a relay that ends TLS with a
    certificate of its own (and dials the real node) gets no session, though the dialler
    accepts any certificate."""
    real, fake = tls_pair(tmp_path, "real"), tls_pair(tmp_path, "fake")
    received: list[tuple[str, bytes]] = []
    with anyio.fail_after(15):
        async with acceptor("s3cret", received, real) as (port, _):
            async with links("s3cret", tls=True) as (peers, _):
                stream = await peers.open("a", f"127.0.0.1:{port}", b"direct")
                assert await stream.receive() == b"ack:direct"
            relay = await listen_tcp("127.0.0.1", 0)

            async def middle(visitor: anyio.abc.SocketStream) -> None:
                inner = await fake.accept(visitor)
                outer, _ = await connect_tls(
                    await connect("127.0.0.1", port), ClientTls(insecure=True), "127.0.0.1"
                )
                await pipe(inner, outer)

            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.serve, middle, tg)
                async with links("s3cret", tls=True) as (peers, _):
                    with pytest.raises(PeerUnavailable, match="did not prove"):
                        await peers.open("a", f"127.0.0.1:{local_port(relay)}", b"relayed")
                tg.cancel_scope.cancel()
            await relay.aclose()
    assert received == [("b", b"direct")]


async def test_connections_that_never_prove_are_bounded() -> None:
    """More than MAX_PROVING connections in their handshake at once: the rest are refused at
    once and counted; once they are gone, an honest peer gets in."""
    received: list[tuple[str, bytes]] = []
    with anyio.fail_after(15):
        async with acceptor("s3cret", received) as (port, refusals):
            idle = [await connect("127.0.0.1", port) for _ in range(MAX_PROVING + 6)]
            for _ in range(100):
                if refusals["cluster_peer_flood"] >= 6:
                    break
                await anyio.sleep(0.02)
            assert refusals["cluster_peer_flood"] == 6
            for sock in idle:
                await sock.aclose()
            async with links("s3cret") as (peers, _):
                for _ in range(50):
                    try:
                        stream = await peers.open("a", f"127.0.0.1:{port}", b"honest")
                        break
                    except PeerUnavailable:
                        await anyio.sleep(0.1)
                assert await stream.receive() == b"ack:honest"
