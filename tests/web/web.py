"""Helpers of the web end-to-end tests: `listen` with its web ports, curl, raw requests.

Every service lives under `DOMAIN`; visitors reach `127.0.0.1:<web port>` and name the service
in the Host header (or `--resolve`, or SNI), as DNS would send them there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e.harness import IO_TIMEOUT_S, Harness, Listen, free_port
from vhost.helpers import require_tool

DOMAIN = "example.com"


@dataclass
class Web:
    """A running `listen` with web ports."""

    listen: Listen
    http_port: int
    https_port: int | None = None
    #: With `endpoints`: the metrics endpoint and the admin API.
    metrics_port: int = 0
    admin_port: int = 0

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def url(self, name: str, path: str = "/") -> str:
        return f"http://{name}.{DOMAIN}:{self.http_port}{path}"


def web_listen(
    harness: Harness,
    *extra: object,
    https: bool = False,
    config: Path | None = None,
    endpoints: bool = False,
) -> Web:
    """`listen` with an HTTP port (and an HTTPS one) under `DOMAIN`."""
    http_port = free_port()
    args: list[object] = ["--http-bind", f"127.0.0.1:{http_port}", "--domain", DOMAIN]
    https_port = None
    if https:
        https_port = free_port()
        args += ["--https-bind", f"127.0.0.1:{https_port}"]
    if config is not None:
        args += ["-c", config]
    metrics_port = admin_port = 0
    if endpoints:
        metrics_port, admin_port = free_port(), free_port()
        args += ["--metrics", f"127.0.0.1:{metrics_port}", "--admin", f"127.0.0.1:{admin_port}"]
    listen = harness.listen(*args, *extra)
    return Web(listen, http_port, https_port, metrics_port, admin_port)


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data

    def seen(self, header: str) -> list[str]:
        """Values of `header` in the request the JSON backend saw."""
        pairs = self.json()["headers"]
        assert isinstance(pairs, list)
        return [value for name, value in pairs if name.lower() == header.lower()]


def curl(url: str, *args: str, timeout_s: float = IO_TIMEOUT_S) -> Answer:
    """curl `url` (with `args`, e.g. `-H Host:...` or `--resolve`); status and body."""
    binary = require_tool("curl")
    marker = "\n--status:"
    done = subprocess.run(
        [binary, "-sS", "--max-time", str(timeout_s), "-o", "-", "-w", marker + "%{http_code}",
         *args, url],
        capture_output=True, timeout=timeout_s + 10,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition(marker.encode())
    assert status, f"curl failed: {done.stderr.decode(errors='replace')}"
    return Answer(int(status), body)


def raw(port: int, data: bytes, timeout_s: float = IO_TIMEOUT_S) -> bytes:
    """Send `data`, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def get(port: int, host: str, path: str = "/", headers: Sequence[str] = ()) -> Answer:
    """One GET through the web port, Host set (urllib: no curl needed)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    for header in headers:
        name, _, value = header.partition(":")
        request.add_header(name.strip(), value.strip())
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as reply:
            return Answer(reply.status, reply.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read())


def metrics(port: int) -> dict[str, float]:
    """Prometheus text from `port` as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=IO_TIMEOUT_S) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, number = line.rpartition(" ")
            values[key] = float(number)
    return values


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """One sample of `values` (labels in any order); 0 when absent."""
    for key, number in values.items():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})?", key)
        if found is None or found.group(1) != name:
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if pairs == labels:
            return number
    return 0.0


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process (its peak resident memory so far), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def rss_mib(pid: int) -> float:
    """VmRSS of a process now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_status(port: int, host: str, status: int, timeout_s: float = 10.0) -> Answer:
    """Poll until a GET of `host` answers `status` (routes change a beat after a log line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = get(port, host)
        if answer.status == status or time.monotonic() > deadline:
            assert answer.status == status, (answer.status, answer.body[:300])
            return answer
        time.sleep(0.05)


def ci() -> bool:
    return os.environ.get("CI") == "true"
