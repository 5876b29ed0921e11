"""Upgrade: WebSocket with a real client and server, and any protocol with half-close."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from .helpers import TIMEOUT_S, Proxy


@contextmanager
def websocket_echo() -> Iterator[tuple[str, int]]:
    """A websockets echo server on loopback that also reports the request it upgraded."""

    def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        ws.send(f"path={ws.request.path} xff={ws.request.headers.get('X-Forwarded-For')}")
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = server.socket.getsockname()[:2]
            yield host, port
        finally:
            server.shutdown()
            thread.join(TIMEOUT_S)


def test_websocket_echo_through_the_proxy(proxy: Proxy) -> None:
    with websocket_echo() as address:
        proxy.add_http("ws", ["ws.example.com"], address)
        sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S)
        with connect("ws://ws.example.com/chat?room=1", sock=sock, open_timeout=TIMEOUT_S) as ws:
            assert ws.recv(timeout=TIMEOUT_S) == "path=/chat?room=1 xff=127.0.0.1"
            # Random bytes: permessage-deflate cannot shrink them, so the counters see them all.
            for message in ["hello", os.urandom(200_000), b"\x00\x01binary"]:
                ws.send(message)
                assert ws.recv(timeout=TIMEOUT_S) == message
        counters = proxy.snapshot().services["ws"]
        assert counters.responses_1xx == 1
        assert counters.bytes_in > 200_000 and counters.bytes_out > 200_000


@contextmanager
def raw_upgrade_server() -> Iterator[tuple[str, int]]:
    """Answers an upgrade with 101 plus bytes in the same segment, echoes, says "bye" on EOF."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(TIMEOUT_S)
    seen: list[bytes] = []

    def serve_one() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT_S)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            seen.append(head)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n"
                b"X-Hop: no\r\n\r\nserver-first;"
            )
            if rest:
                conn.sendall(rest)
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b";bye")  # after the visitor's EOF: half-close carried both ways
            conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[:2]
    finally:
        server.close()
        thread.join(TIMEOUT_S)
        assert seen, "the upgrade never reached the server"
        head = seen[0].lower()
        assert b"connection: upgrade" in head and b"upgrade: echo/1" in head


def test_any_upgrade_becomes_a_byte_pipe_with_half_close(proxy: Proxy) -> None:
    with raw_upgrade_server() as address:
        proxy.add_http("raw", ["raw.example.com"], address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            # Bytes after the request head in the same segment: h11 buffers them (trailing_data).
            sock.sendall(
                b"GET /up HTTP/1.1\r\nHost: raw.example.com\r\nConnection: Upgrade\r\n"
                b"Upgrade: echo/1\r\n\r\nvisitor-early;"
            )
            received = b""
            while b"visitor-early;" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"upgrade: echo/1" in head.lower() and b"connection: upgrade" in head.lower()
            sock.sendall(b"more")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                body += chunk
        assert body == b"server-first;visitor-early;more;bye"
