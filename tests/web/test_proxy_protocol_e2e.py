"""PROXY protocol v1 and v2 end to end: nginx behind the tunnel (`listen ... proxy_protocol`)
learns the visitor's real address, for a plain TCP service and for an HTTP service."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e.harness import Harness
from vhost.nginx import free_port, proxy_protocol_server, running_nginx

from .web import DOMAIN, web_listen


def _ask(port: int, host: str) -> tuple[int, str]:
    """One request from a fresh connection: (our source port, nginx's answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        source_port = sock.getsockname()[1]
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return source_port, body.decode().strip()


def test_nginx_behind_the_tunnel_sees_the_visitor(harness: Harness, tmp_path: Path) -> None:
    nginx_port = free_port()
    with running_nginx(tmp_path, proxy_protocol_server(nginx_port), [nginx_port]):
        web = web_listen(harness)
        config = harness.write(
            "up.yaml",
            "client:\n  services:\n"
            f"    - {{name: pp1, local: {nginx_port}, proxy_protocol: v1}}\n"
            f"    - {{name: pp2, local: {nginx_port}, proxy_protocol: v2}}\n"
            f"    - {{name: site, type: http, local: {nginx_port}, proxy_protocol: v2}}\n",
        )
        up = harness.up(web.listen, config=config, wait=False)
        services = up.wait_announced(3)
        for name in ("pp1", "pp2"):
            public = services[name].port
            source, answer = _ask(public, "tcp.example")
            # nginx read the visitor's address and the public port it connected to, not the
            # client's connection from 127.0.0.1 to nginx.
            assert answer.startswith(f"client=127.0.0.1:{source} server=127.0.0.1:{public} "), (
                name,
                answer,
            )
        source, answer = _ask(web.http_port, f"site.{DOMAIN}")
        assert answer.startswith(f"client=127.0.0.1:{source} server=127.0.0.1:{web.http_port} ")
        assert f"host=site.{DOMAIN}" in answer
