"""A real nginx (Debian's) on loopback for the tests: a PROXY protocol reader, a fast backend.

Started in the foreground (`daemon off`, one process), with its own prefix folder, and stopped
when the `with` block ends. Skips without nginx, but fails under CI=true (`require_tool`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import TIMEOUT_S, require_tool

#: What a `proxy_protocol` listener answers: the addresses nginx read from our header.
PROXY_REPLY = (
    "client=$proxy_protocol_addr:$proxy_protocol_port"
    " server=$proxy_protocol_server_addr:$proxy_protocol_server_port"
    " peer=$remote_addr host=$host"
)

_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{servers}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_protocol_server(port: int) -> str:
    """A server block on `port` that reads a PROXY header and answers with what it read."""
    return (
        f"    server {{\n        listen 127.0.0.1:{port} proxy_protocol;\n"
        f'        location / {{ return 200 "{PROXY_REPLY}\\n"; }}\n    }}'
    )


@contextmanager
def running_nginx(folder: Path, servers: str, ports: list[int]) -> Iterator[None]:
    """nginx with `servers` (server blocks), until every port in `ports` accepts."""
    binary = require_tool("nginx")
    conf = folder / "nginx.conf"
    conf.write_text(_CONF.format(dir=folder, servers=servers))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        stderr = process.stderr.read() if process.stderr else b""
                        pytest.fail(f"nginx did not start: {stderr.decode(errors='replace')}")
                    time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(TIMEOUT_S)
