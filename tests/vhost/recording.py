"""A raw HTTP/1.1 service for the vhost tests: it records every request byte for byte and
answers each with what a script gives (the fast path's and the callback path's tests)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .helpers import TIMEOUT_S

#: request head (bytes, without its blank line) -> (response bytes, close after sending)
Script = Callable[[bytes], tuple[bytes, bool]]


class RecordingBackend:
    """A raw HTTP/1.1 server: records every request (head and Content-Length body) byte for
    byte, per connection, and answers each with what the script gives."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT_S)
        self.requests: list[bytes] = []
        self.connections = 0
        self.send_failed = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.getsockname()[:2]
        return str(host), int(port)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve_one, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    elif name.strip().lower() == b"transfer-encoding":  # no trailers here
                        while b"0\r\n\r\n" not in pending:
                            pending += conn.recv(65536)
                        length = pending.index(b"0\r\n\r\n") + 5
                while len(pending) < length:
                    pending += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + pending[:length])
                pending = pending[length:]
                reply, close = self.script(head)
                try:
                    conn.sendall(reply)
                except OSError:
                    self.send_failed.set()
                    return
                if close:
                    return
                if reply.startswith(b"HTTP/1.1 101 "):  # switched: an echo from here on
                    while data := pending or conn.recv(65536):
                        pending = b""
                        conn.sendall(data)
                    return


@contextmanager
def recording(script: Script) -> Iterator[RecordingBackend]:
    server = RecordingBackend(script)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        server.server.close()
        thread.join(TIMEOUT_S)
        for worker in server._threads:
            worker.join(2.0)
