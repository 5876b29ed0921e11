"""Real cluster processes for the tests: three `listen` nodes sharing a redis-server, each on
a loopback address of its own (127.0.0.1, .2, .3), so that all of them can bind the same
public port; and a relay that plays the DNS name (or L4 balancer) a client dials.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness import Harness, Listen, free_port, recv_all

from muxtunnel.cluster.testing import RedisServer

#: The nodes' loopback addresses: one per node, the same ports on each.
NODE_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
DOMAIN = "cluster.test"
#: Short leases so a SIGKILLed node's names come free within seconds (the default is 10 s).
LEASE_S = 2.0
#: A client that reconnects fast (the default backoff starts at 1 s and doubles to 30 s).
CLIENT_FAST = "client:\n  reconnect_min_s: 0.2\n  reconnect_max_s: 1.0\n"


@dataclass
class Node:
    """One `listen` node: its process and where its ports are."""

    proc: Listen
    host: str
    node_id: str
    http_port: int
    https_port: int
    advertise: str
    #: The admin API and the metrics endpoint (loopback: no token needed).
    admin: str


@dataclass
class Cluster:
    """Three nodes (A, B, C) on one redis-server."""

    harness: Harness
    redis: RedisServer
    nodes: list[Node] = field(default_factory=list)

    def start_node(self, index: int, *extra: object, lease_s: float = LEASE_S) -> Node:
        host = NODE_HOSTS[index]
        node_id = "abc"[index]
        http_port, https_port = free_port(host), free_port(host)
        advertise = f"{host}:{free_port(host)}"
        admin = f"{host}:{free_port(host)}"
        config = self.harness.write(
            f"node-{node_id}.yaml",
            f"server:\n  max_services_per_session: 400\n  cluster:\n    url: {self.redis.url}\n"
            f"    lease_s: {lease_s}\n",
        )
        proc = self.harness.listen(
            "--config", config, "--node-id", node_id, "--advertise", advertise,
            "--public-host", host, "--http-bind", f"{host}:{http_port}", "--domain", DOMAIN,
            "--https-bind", f"{host}:{https_port}", "--admin", admin,
            "--metrics", f"{host}:{free_port(host)}", *extra, host=host,
        )  # fmt: skip
        proc.wait_event("cluster node up")
        node = Node(proc, host, node_id, http_port, https_port, advertise, admin)
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        return node


class Relay:
    """A TCP relay to the first of its backends that accepts: what a DNS name over every node
    is to a client that dials again after its node died."""

    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        for backend in self.backends:
            try:
                upstream = socket.create_connection(backend, timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            self._open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_copy, args=(a, b), daemon=True).start()
            return
        conn.close()

    def cut(self) -> None:
        """Break every relayed connection (a client's node is gone from its view; the node
        itself lives on)."""
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._open.clear()

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


class HttpTarget:
    """A local HTTP service answering every GET with `name`, the path it was asked and the
    X-Forwarded-For it got."""

    def __init__(self, name: str) -> None:
        body_name = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                xff = self.headers.get("X-Forwarded-For", "")
                body = body_name + b" " + self.path.encode() + b" xff=" + xff.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(host: str, port: int, vhost: str, path: str = "/") -> tuple[int, bytes]:
    """One GET with `Host: vhost`; the status and the body."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {vhost}\r\nConnection: close\r\n\r\n".encode())
        data = recv_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def tcp_roundtrip(host: str, port: int, payload: bytes, timeout_s: float = 10.0) -> bytes:
    """Send `payload` to an echo service, half-close, read everything back (what arrived, up
    to a reset: the caller compares)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:

        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the reader sees the failure too

        sender = threading.Thread(target=send)
        sender.start()
        try:
            data = recv_all(sock)
        except OSError:
            data = b""
        sender.join()
    return data


def udp_roundtrip(host: str, port: int, payloads: Sequence[bytes]) -> list[bytes]:
    """Each datagram, sent and its echo read (up to 3 tries each: UDP may drop the first
    while the node dials its peer)."""
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for payload in payloads:
            for _ in range(5):
                sock.sendto(payload, (host, port))
                try:
                    replies.append(sock.recv(65536))
                    break
                except TimeoutError:
                    continue
    return replies


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll `predicate` until it returns something true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"not within {timeout_s} s: {what} (last: {last!r})")


class NameServer:
    """A local TCP service that answers each connection with its name, then closes."""

    def __init__(self, name: str, backlog: int = 64) -> None:
        self.name = name.encode()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self._answer(conn)
            except OSError:
                pass

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.name)

    def close(self) -> None:
        self.sock.close()


def read_name(host: str, port: int) -> bytes:
    """What a `NameServer` behind `host:port` says."""
    with socket.create_connection((host, port), timeout=5) as sock:
        return recv_all(sock)


class TlsTarget(NameServer):
    """A local service speaking TLS itself (an `up --https` one): answers each connection,
    after the handshake, with its name."""

    def __init__(self, name: str, directory: Path) -> None:
        from muxtunnel.tls import generate_self_signed

        cert, key, _ = generate_self_signed(["localhost"])
        (directory / f"{name}.crt").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
        super().__init__(name, backlog=16)

    def _answer(self, conn: socket.socket) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(self.name)


def tls_name(host: str, port: int, sni: str) -> bytes:
    """What a `TlsTarget` says through `host:port`, reached by SNI `sni`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            return tls.recv(64)
