"""TCP through real `listen` and `up` processes: bulk echo, many visitors, half-close, resets.

The visitor is a plain socket in the test; the local service is a thread in the test
(`TcpEchoServer`, or a `TcpTarget` whose connections the test drives itself).
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import (
    IO_TIMEOUT_S,
    Harness,
    TcpEchoServer,
    TcpTarget,
    echo_works,
    free_port,
    recv_all,
    tcp_connects,
)

MIB = 1 << 20
LINGER_ZERO = struct.pack("ii", 1, 0)


@pytest.fixture
def target() -> Iterator[TcpTarget]:
    server = TcpTarget()
    yield server
    server.close()


def _tunnel(harness: Harness, local_port: int) -> tuple[str, int]:
    """A listen and an up exposing 127.0.0.1:local_port; returns the public address."""
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"svc={local_port}:{free_port()}"])
    return up.public("svc")


def _visitor(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=IO_TIMEOUT_S)


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    sock.close()


def _read_until_failure(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Read until EOF or an error; returns what was read and the error (None: a clean EOF)."""
    chunks = []
    try:
        while data := sock.recv(1 << 16):
            chunks.append(data)
    except OSError as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(64 * MIB, id="64MiB"),
        pytest.param(1024 * MIB, id="1GiB", marks=pytest.mark.slow),
    ],
)
def test_echo_each_way(harness: Harness, tcp_echo: TcpEchoServer, size: int) -> None:
    """`size` bytes to an echo service and back on one connection; sha256 equal both ways."""
    address = _tunnel(harness, tcp_echo.port)
    block = random.Random(64).randbytes(64 * MIB)
    sent = hashlib.sha256()
    for _ in range(size // len(block)):
        sent.update(block)
    sent_digest = sent.hexdigest()
    send_error: list[BaseException] = []

    def send(sock: socket.socket) -> None:
        try:
            view = memoryview(block)
            for _ in range(size // len(block)):
                for offset in range(0, len(block), MIB):
                    sock.sendall(view[offset : offset + MIB])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            send_error.append(exc)

    received = hashlib.sha256()
    count = 0
    started = time.monotonic()
    with socket.create_connection(address, timeout=60) as sock:
        sender = threading.Thread(target=send, args=(sock,), daemon=True)
        sender.start()
        while chunk := sock.recv(1 << 20):
            received.update(chunk)
            count += len(chunk)
        sender.join(60)
        assert not sender.is_alive()
    elapsed = time.monotonic() - started
    assert not send_error, send_error
    assert count == size, f"echoed {count} of {size} bytes in {elapsed:.1f} s"
    assert received.hexdigest() == sent_digest
    assert tcp_echo.connections == 1


def test_200_concurrent_visitors(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    """All 200 are through the tunnel at once (each has echoed a hello) before the payloads flow."""
    address = _tunnel(harness, tcp_echo.port)
    visitors, size = 200, 16 * 1024
    everyone_connected = threading.Barrier(visitors, timeout=60)

    def visit(i: int) -> bool:
        payload = random.Random(i).randbytes(size)
        with socket.create_connection(address, timeout=60) as sock:
            hello = f"hello {i:03}".encode()
            sock.sendall(hello)
            got = b""
            while len(got) < len(hello):
                chunk = sock.recv(len(hello) - len(got))
                assert chunk, f"visitor {i}: EOF before its hello came back"
                got += chunk
            assert got == hello
            everyone_connected.wait()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock) == payload

    with ThreadPoolExecutor(visitors) as pool:
        results = list(pool.map(visit, range(visitors), timeout=120))
    assert results == [True] * visitors
    assert tcp_echo.connections == visitors


def test_half_close_from_visitor(harness: Harness, target: TcpTarget) -> None:
    """Visitor SHUT_WR: the target reads EOF, and its reply still reaches the visitor."""
    address = _tunnel(harness, target.port)
    request = random.Random(1).randbytes(300_000)
    reply = random.Random(2).randbytes(3 * MIB)
    with _visitor(address) as visitor:
        visitor.sendall(request)
        visitor.shutdown(socket.SHUT_WR)
        with target.accept() as conn:
            assert recv_all(conn) == request  # ends with EOF: the half-close came through
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            got, error = _read_until_failure(visitor)
            assert error is None, f"visitor got {error!r} instead of the reply and EOF"
            assert got == reply


def test_half_close_from_target(harness: Harness, target: TcpTarget) -> None:
    """Target SHUT_WR: the visitor reads EOF, and can still send to the target."""
    address = _tunnel(harness, target.port)
    banner = b"220 ready, then no more from me\r\n"
    upload = random.Random(3).randbytes(3 * MIB)
    with _visitor(address) as visitor:
        with target.accept() as conn:
            conn.sendall(banner)
            conn.shutdown(socket.SHUT_WR)
            got, error = _read_until_failure(visitor)
            assert (got, error) == (banner, None)
            visitor.sendall(upload)
            visitor.shutdown(socket.SHUT_WR)
            assert recv_all(conn) == upload


def test_target_reset_reaches_visitor(harness: Harness, target: TcpTarget) -> None:
    """The target aborts (SO_LINGER 0): the visitor gets ECONNRESET, not a clean EOF."""
    address = _tunnel(harness, target.port)
    with _visitor(address) as visitor:
        visitor.sendall(b"ping")
        conn = target.accept()
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        _rst_close(conn)
        got, error = _read_until_failure(visitor)
        assert got in (b"", b"pong")
        assert isinstance(error, ConnectionResetError), f"visitor saw {error!r} (None: clean EOF)"


def test_visitor_reset_reaches_target(harness: Harness, target: TcpTarget) -> None:
    """The visitor aborts (SO_LINGER 0): the target sees a reset or an error, not a clean EOF."""
    address = _tunnel(harness, target.port)
    visitor = _visitor(address)
    try:
        visitor.sendall(b"ping")
        with target.accept() as conn:
            assert conn.recv(4) == b"ping"
            _rst_close(visitor)
            got, error = _read_until_failure(conn)
            assert got == b""
            assert isinstance(error, OSError), f"target saw {error!r} (None: clean EOF)"
    finally:
        visitor.close()


def test_local_service_down_resets_visitor(harness: Harness) -> None:
    """Nothing listens on the local port: the visitor's connection ends with RST.

    The server accepts the visitor before the client dials the local service, so the RST can
    come back before this thread, slowed by a loaded machine, returns from connect() or
    sendall(): a reset there is the same outcome as one in recv(). What must never happen is a
    clean EOF or any reply; and each reset is the server's answer to the client's refused dial
    (its "visitor closed" line says the stream was reset), not a refusal of its own."""
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"svc={free_port()}:{free_port()}"])
    address = up.public("svc")
    visitors = 3
    for _ in range(visitors):
        got, error = b"", None
        try:
            with _visitor(address) as visitor:
                visitor.sendall(b"anyone there?")
                got, error = _read_until_failure(visitor)
        except ConnectionResetError as exc:
            error = exc
        assert got == b""
        assert isinstance(error, ConnectionResetError), f"visitor saw {error!r} (None: clean EOF)"

    def resets() -> list[dict[str, object]]:
        closed = listen.events("visitor closed")
        return [e for e in closed if "StreamResetError" in str(e.get("error"))]

    listen.wait_for(lambda: len(resets()) >= visitors, IO_TIMEOUT_S, "a reset stream per visitor")
    assert len(listen.events("visitor closed")) == visitors, listen.events("visitor closed")


def test_public_host_is_where_public_ports_bind(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    """--public-host 127.0.0.2: the service binds there (and is announced so), not on --bind."""
    listen = harness.listen("--public-host", "127.0.0.2")
    remote = free_port("127.0.0.2")
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{remote}"])
    assert up.public("echo") == ("127.0.0.2", remote)
    assert echo_works("127.0.0.2", remote)
    assert not tcp_connects("127.0.0.1", remote)


def test_wildcard_public_host_is_announced_as_the_server_address(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen(host="0.0.0.0")
    remote = free_port()
    up = harness.up(f"127.0.0.1:{listen.port}", tcp=[f"echo={tcp_echo.port}:{remote}"])
    assert up.public("echo") == ("127.0.0.1", remote)
    assert echo_works("127.0.0.1", remote)
