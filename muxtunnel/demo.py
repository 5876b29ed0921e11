"""`make run`: a whole tunnel on loopback, as real processes, until Ctrl-C.

Starts a small HTTP service, `muxtunnel listen`, and, once listen says it is listening, `muxtunnel
up` exposing the service (started earlier, its first lines would be reconnect warnings); prints the
public address and fetches it once through the tunnel to show it works. Both processes' log lines
are relayed with their name in front; `up` logs warnings only, so that each visitor shows once
(listen's line), not once per process.
"""

from __future__ import annotations

import http.server
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO

#: How long listen may take to bind its port (a Python process starting on a loaded machine).
LISTEN_START_S = 30.0
#: listen's console log line saying that its control port is bound.
_LISTENING = re.compile(r"\] listening\s")

PAGE = b"<!doctype html><title>muxtunnel demo</title><h1>Hello through muxtunnel</h1>\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"demo http: {self.address_string()} {format % args}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _relay(name: str, pipe: IO[str], seen: threading.Event | None = None) -> None:
    """Copy a process's log lines to our stderr, each after its name; set `seen` once listen
    says it is listening."""
    for line in pipe:
        sys.stderr.write(f"{name:<6} | {line}")
        sys.stderr.flush()
        if seen is not None and _LISTENING.search(line):
            seen.set()


def main() -> int:
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    http_port = http_server.server_address[1]
    control_port = free_port()
    env = dict(os.environ, MUXTUNNEL_TOKEN=secrets.token_urlsafe(24))
    exe = [sys.executable, "-m", "muxtunnel"]
    print(f"demo HTTP service on 127.0.0.1:{http_port}", flush=True)
    logs = ["--log-format", "console"]
    listen = subprocess.Popen(
        [*exe, "listen", "--bind", f"127.0.0.1:{control_port}", "--allow-ports", "20000-40000",
         *logs],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert listen.stderr is not None
    listening = threading.Event()
    threading.Thread(target=_relay, args=("listen", listen.stderr, listening), daemon=True).start()
    deadline = time.monotonic() + LISTEN_START_S
    while not listening.wait(0.1):
        if listen.poll() is not None or time.monotonic() > deadline:
            print("muxtunnel listen did not start; see the log above", file=sys.stderr)
            listen.kill()
            return 1
    up = subprocess.Popen(
        [*exe, "up", "--server", f"127.0.0.1:{control_port}", "--tcp",
         f"demo=127.0.0.1:{http_port}", "--no-console", "--log-level", "warning", *logs],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert up.stderr is not None
    threading.Thread(target=_relay, args=("up", up.stderr), daemon=True).start()
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()  # "demo tcp 127.0.0.1:PORT -> 127.0.0.1:HTTP"
        if not line:
            print("muxtunnel up exited before registering; see the log above", file=sys.stderr)
            return 1
        public = line.split()[2]
        print(f"\n  {line}\n\n  public address: http://{public}/\n", flush=True)
        with urllib.request.urlopen(f"http://{public}/", timeout=10) as response:
            print(
                f"  fetched through the tunnel: HTTP {response.status}, "
                f"{len(response.read())} bytes\n\n  Ctrl-C stops the demo.\n",
                flush=True,
            )
        while listen.poll() is None and up.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (up, listen):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (up, listen):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        http_server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
