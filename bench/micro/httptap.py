"""What the inspector's passive HTTP tap costs `up`: CPU per exchange and per byte, and memory.

    .venv/bin/python -m bench.micro.httptap [--exchanges 20000] [--megabytes 256]
    .venv/bin/python -m bench.micro.httptap --processes [--requests 3000]

In process: the tap alone (`muxtunnel.httptap.Tap`), fed what a connection would see: small
exchanges (a browser-like GET of about 400 bytes, a 1 KiB JSON answer), one exchange per
chunk each way, with the same heads every time (as a keep-alive client polling one URL, and a
server within one Date second: the tap frames a repeated head from what it remembers), with
another request target each time (a browser's or an API client's next request: the same
headers), and with heads that change every time; and a bulk download in 256 KiB chunks (the
relay's read size). CPU seconds (process time) per exchange and per GiB.

`--processes`: real `listen` and `up` on loopback, an HTTP service behind `up --http`, and
`--requests` GETs (1 KiB answers) over 8 keep-alive connections, once with the inspector on
and once with `--no-inspect`: `up`'s CPU seconds per 1000 requests, and its RSS idle after
start (and after the requests: the ring full) beside a `--tcp`-only `up` (no web stack).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.procstat import cpu_seconds, rss_mib
from muxtunnel.captures import Captures
from muxtunnel.httptap import Tap

REQUEST = (
    b"GET /api/v1/items?page=3&sort=name HTTP/1.1\r\nHost: app.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0\r\nAccept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept-Language: en-GB,en;q=0.9\r\n"
    b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\n"
    b"Cookie: session=abcdef0123\r\n\r\n"
)
BODY = json.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(40)]}).encode()[:1024]
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
    b"Date: Sun, 01 Jun 2025 12:00:00 GMT\r\nServer: app\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)
CHUNK_BYTES = 256 * 1024  # muxtunnel.proxy.CHUNK_BYTES


#: How the heads of `small_exchanges` change from one exchange to the next.
VARY = {
    "same": "the same heads each time",
    "target": "another request target each time, the same answer head",
    "all": "heads that change (target, a cookie, the Date)",
}


def small_exchanges(count: int, vary: str = "same") -> float:
    """CPU seconds per exchange; `vary` (a key of `VARY`): "target" asks for another page each
    time with the same headers (what the tap remembers of the last request but its target
    still frames it); "all" changes a header and the answer's Date too, so no head is framed
    from what the tap remembers of the last."""
    captures = Captures()
    tap = Tap(captures, "app", "198.51.100.7:40000")
    requests, responses = [REQUEST] * count, [RESPONSE] * count
    if vary != "same":
        requests = [REQUEST.replace(b"page=3", b"page=%d" % (n % 10)) for n in range(count)]
    if vary == "all":
        requests = [r.replace(b"=abcdef", b"=%06d" % (n % 10)) for n, r in enumerate(requests)]
        responses = [RESPONSE.replace(b":00 GMT", b":%02d GMT" % (n % 10)) for n in range(count)]
    started = time.process_time()
    for request, response in zip(requests, responses, strict=True):
        tap.feed_request(request)
        tap.feed_response(response)
    elapsed = time.process_time() - started
    assert captures.recorded == count and captures.abandoned == 0
    return elapsed / count


def bulk(megabytes: int) -> float:
    """CPU seconds per GiB of response body."""
    size = megabytes * 1024 * 1024
    captures = Captures()
    tap = Tap(captures, "app", "p")
    chunk = b"x" * CHUNK_BYTES
    started = time.process_time()
    tap.feed_request(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    for _ in range(size // CHUNK_BYTES):
        tap.feed_response(chunk)
    elapsed = time.process_time() - started
    assert captures.recorded == 1
    return elapsed / (size / 2**30)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        return


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "muxtunnel", *args], env=env, stdout=out, stderr=out
        )


def _wait_line(path: Path, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path}:\n{path.read_text()[-2000:]}")
        time.sleep(0.05)


def processes(requests: int) -> dict[str, float]:
    """Real processes: up's CPU per 1000 requests and RSS, inspector on and off."""
    folder = Path(tempfile.mkdtemp(prefix="muxtunnel-bench-tap-"))
    env = {**os.environ, "XDG_STATE_HOME": str(folder), "MUXTUNNEL_TOKEN": "b" * 32}
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    control, web = _free_port(), _free_port()
    listen = _spawn(
        ["listen", "--bind", f"127.0.0.1:{control}", "--http-bind", f"127.0.0.1:{web}",
         "--domain", "example.com", "--log-format", "json", "--log-level", "warning"],
        env, folder / "listen.log",
    )  # fmt: skip
    figures: dict[str, float] = {}
    try:
        time.sleep(1.0)
        common = ["up", "--server", f"127.0.0.1:{control}", "--no-console", "--log-format",
                  "json", "--log-level", "warning"]  # fmt: skip
        for label, extra in (
            ("tcp only", ["--tcp", f"t={backend.server_address[1]}"]),
            ("http, --no-inspect", ["--http", f"app={backend.server_address[1]}", "--no-inspect"]),
            ("http, inspector", ["--http", f"app={backend.server_address[1]}",
                                 "--inspect", f"127.0.0.1:{_free_port()}"]),
        ):  # fmt: skip
            log = folder / f"up-{len(figures)}.log"
            up = _spawn([*common, *extra], env, log)
            try:
                _wait_line(log, " -> ")
                time.sleep(3.0)  # settled: idle
                figures[f"{label}: idle RSS MiB"] = rss_mib(up.pid)
                if label == "tcp only":
                    continue
                before = cpu_seconds([up.pid], children=False)
                _requests(web, requests)
                spent = cpu_seconds([up.pid], children=False) - before
                figures[f"{label}: CPU s per 1000 requests"] = spent / requests * 1000
                figures[f"{label}: RSS MiB after"] = rss_mib(up.pid)
            finally:
                up.terminate()
                up.wait(20)
    finally:
        listen.terminate()
        listen.wait(20)
        backend.shutdown()
    return figures


def _requests(port: int, count: int, connections: int = 8) -> None:
    def run(share: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        for n in range(share):
            conn.request("GET", f"/api/v1/items?n={n}", headers={"Host": "app.example.com"})
            answer = conn.getresponse()
            assert answer.status == 200, answer.status
            answer.read()
        conn.close()

    threads = [
        threading.Thread(target=run, args=(count // connections,)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--processes", action="store_true")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    if args.processes:
        for name, value in processes(args.requests).items():
            print(f"{name:45} {value:8.2f}")
        return
    for vary, what in VARY.items():
        per_exchange = small_exchanges(args.exchanges, vary)
        print(f"small exchange ({len(REQUEST)} B request, {len(RESPONSE)} B response), {what}: "
              f"{per_exchange * 1e6:.1f} us CPU each")  # fmt: skip
    print(f"bulk response body, {CHUNK_BYTES // 1024} KiB chunks: "
          f"{bulk(args.megabytes):.3f} s CPU per GiB")  # fmt: skip


if __name__ == "__main__":
    main()
