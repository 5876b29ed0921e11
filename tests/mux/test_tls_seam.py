"""TLS on the transport (`mux.start_tls`): the handshake runs on the loop's SSL transport, the
streams it returns look like anyio's own (so the carrier fast path drives them), and no byte is
lost, not even those anyio read before the handshake. On plain asyncio and on uvloop."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mux import MuxConfig, Session, start_tls
from mux._anyio_seam import socket_internals
from mux._carrier import TlsTransportCarrier
from mux.testing import memory_stream_pair, tcp_stream_pair

pytestmark = pytest.mark.anyio
WAIT_S = 20.0


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate, and a client that pins nothing."""
    from muxtunnel.tls import generate_self_signed  # any certificate will do

    cert_pem, key_pem, _ = generate_self_signed(["localhost"], days=1)
    folder: Path = tmp_path_factory.mktemp("tls-seam")
    (folder / "c.pem").write_bytes(cert_pem)
    (folder / "k.pem").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "c.pem", folder / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


@asynccontextmanager
async def tls_pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], *, server_reads_first: bool = False
) -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream, ssl.SSLObject]]:
    """Both ends of a TCP connection, upgraded in place. With `server_reads_first`, anyio's
    protocol on the server has read the client's hello before the server's handshake starts."""
    server_context, client_context = contexts
    async with tcp_stream_pair() as (client_tcp, server_tcp):
        upgraded: dict[str, tuple[anyio.abc.SocketStream, ssl.SSLObject]] = {}

        async def client_side() -> None:
            result = await start_tls(client_tcp, client_context, server_side=False)
            assert result is not None
            upgraded["client"] = result

        async with anyio.create_task_group() as tg:
            tg.start_soon(client_side)
            if server_reads_first:
                internals = socket_internals(server_tcp)
                assert internals is not None
                internals.transport.resume_reading()
                with anyio.fail_after(WAIT_S):
                    while not internals.unread:
                        await anyio.sleep(0.005)
            with anyio.fail_after(WAIT_S):
                result = await start_tls(server_tcp, server_context, server_side=True)
            assert result is not None
            upgraded["server"] = result
        (client, ssl_object), (server, _) = upgraded["client"], upgraded["server"]
        try:
            yield client, server, ssl_object
        finally:
            await client.aclose()
            await server.aclose()


@pytest.mark.parametrize("server_reads_first", [False, True], ids=["fresh", "hello-already-read"])
async def test_upgraded_streams_carry_bytes_both_ways(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], server_reads_first: bool
) -> None:
    async with tls_pair(contexts, server_reads_first=server_reads_first) as (client, server, obj):
        assert obj.version() in ("TLSv1.2", "TLSv1.3")
        der = obj.getpeercert(binary_form=True)
        assert der is not None and len(hashlib.sha256(der).digest()) == 32
        with anyio.fail_after(WAIT_S):
            await client.send(b"ping")
            assert await server.receive() == b"ping"
            await server.send(b"pong")
            assert await client.receive() == b"pong"
        for stream in (client, server):
            assert socket_internals(stream) is not None  # what the carrier fast path needs
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            assert raw.fileno() >= 0  # socket options still reach the TCP socket


async def test_a_session_over_tls_takes_the_fast_path_and_loses_nothing(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    data = bytes(range(256)) * 16 * 1024  # 4 MiB, both ways at once
    async with tls_pair(contexts) as (client_stream, server_stream, _):
        async with (
            Session(client_stream, client=True, config=MuxConfig()) as client,
            Session(server_stream, client=False, config=MuxConfig()) as server,
        ):
            for session in (client, server):  # the SSL transport, driven as a protocol
                assert isinstance(session._carrier, TlsTransportCarrier)
            with anyio.fail_after(WAIT_S):
                outgoing = await client.open_stream()
                incoming = await server.accept_stream()
                received: dict[str, bytearray] = {"server": bytearray(), "client": bytearray()}

                async def send(stream: anyio.abc.ByteStream) -> None:
                    for offset in range(0, len(data), 65536):
                        await stream.send(data[offset : offset + 65536])
                    await stream.send_eof()  # a visitor's half-close rides the session

                async def drain(stream: anyio.abc.ByteStream, name: str) -> None:
                    async for chunk in stream:
                        received[name] += chunk

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send, outgoing)
                    tg.start_soon(send, incoming)
                    tg.start_soon(drain, incoming, "server")
                    tg.start_soon(drain, outgoing, "client")
            assert received["server"] == data and received["client"] == data


async def test_bulk_frames_are_decrypted_into_buffers_small_enough_to_stay_views(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """However much the SSL protocol holds undecrypted, a buffer is at most four full Data
    frames: a bulk frame is handed on as a view of it, not copied (`MuxStream._on_data`)."""
    async with tls_pair(contexts) as (_client, server_stream, _):
        async with Session(server_stream, client=False, config=MuxConfig()) as server:
            carrier = server._carrier
            assert isinstance(carrier, TlsTransportCarrier)
            frame = MuxConfig().max_frame_bytes
            assert len(carrier.get_buffer(16 * frame)) <= 4 * frame
            assert len(carrier.get_buffer(1000)) == 1000  # a small read gets what it asked


async def test_frames_received_over_tls_are_read_only_views(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Read-only, as a plain transport's bytes: a resumable session that sends them on (a
    splice) keeps them in its replay log as they are, without a copy."""
    data = bytes(range(256)) * 1024  # 256 KiB: bulk frames

    class Consumer:
        def __init__(self) -> None:
            self.chunks: list[memoryview] = []
            self.done = anyio.Event()

        def stream_data(self, chunk: memoryview) -> None:
            self.chunks.append(chunk)

        def stream_eof(self) -> None:
            self.done.set()

        def stream_failed(self, error: anyio.BrokenResourceError) -> None:
            self.done.set()

        def stream_writable(self) -> None:
            pass

    async with tls_pair(contexts) as (client_stream, server_stream, _):
        async with (
            Session(client_stream, client=True, config=MuxConfig()) as client,
            Session(server_stream, client=False, config=MuxConfig()) as server,
        ):
            with anyio.fail_after(WAIT_S):
                outgoing = await client.open_stream()
                incoming = await server.accept_stream()
                consumer = Consumer()
                incoming.attach(consumer)
                await outgoing.send(data)
                await outgoing.send_eof()
                await consumer.done.wait()
    assert b"".join(consumer.chunks) == data
    assert all(chunk.readonly for chunk in consumer.chunks)


async def test_other_streams_are_left_to_the_caller(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    left, _right = memory_stream_pair(1024)
    assert await start_tls(left, contexts[1], server_side=False) is None


async def test_a_peer_gone_before_the_handshake_is_an_end_of_stream(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tcp_stream_pair() as (client, server):
        await client.send_eof()
        internals = socket_internals(server)
        assert internals is not None
        internals.transport.resume_reading()
        with anyio.fail_after(WAIT_S):
            while not internals.at_eof:
                await anyio.sleep(0.005)
        with pytest.raises(anyio.EndOfStream):
            await start_tls(server, contexts[0], server_side=True)


async def test_a_failed_handshake_raises_and_closes(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tcp_stream_pair() as (client, server):
        await client.send(b"\x00\x00\x00\x00 not a TLS hello, a yamux frame" + bytes(64))
        with anyio.fail_after(WAIT_S), pytest.raises((ssl.SSLError, ConnectionError)):
            await start_tls(server, contexts[0], server_side=True)
