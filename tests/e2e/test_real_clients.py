"""Real programs on both ends of the tunnel: curl against python's http.server, and iperf3.

iperf3 talks TCP (control) and UDP (data, with -u) to the same port, so its tunnel exposes one
TCP and one UDP service on one shared remote port.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testenv import skip_or_fail

from .harness import (
    Harness,
    free_port,
    kill_process_group,
    tcp_connects,
    wait_until,
)

#: Bound for one run of a client program.
CLIENT_TIMEOUT_S = 30.0


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        skip_or_fail(f"{program} is not installed")
    return path


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=log.parent, start_new_session=True,
        )  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
        timeout=CLIENT_TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """python -m http.server on 127.0.0.1, serving a fresh directory; yields (port, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    log = tmp_path / "http.server.log"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = _start([*argv, "--directory", str(root)], log)
    try:
        wait_until(
            lambda: proc.poll() is not None or tcp_connects("127.0.0.1", port),
            20,
            "http.server to listen",
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        yield port, root
    finally:
        kill_process_group(proc)


def test_curl_through_the_tunnel(
    harness: Harness, http_server: tuple[int, Path], tmp_path: Path
) -> None:
    curl = _need("curl")
    port, root = http_server
    body = random.Random(11).randbytes(5 * 1024 * 1024)
    (root / "blob.bin").write_bytes(body)
    (root / "hello.txt").write_text("hello through the tunnel\n")
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"web={port}:{free_port()}"])
    host, public = up.public("web")
    base = f"http://{host}:{public}"
    out = tmp_path / "blob.out"
    # Two requests on one connection (keep-alive where the server allows it), then a big one.
    result = _run([curl, "-sS", "--fail", "--max-time", "20", f"{base}/hello.txt", f"{base}/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello through the tunnel\n")
    assert "blob.bin" in result.stdout  # the directory listing
    result = _run([curl, "-sS", "--fail", "--max-time", "20", "-o", str(out), f"{base}/blob.bin"])
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()


@pytest.fixture
def iperf3_tunnel(harness: Harness, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """An iperf3 server behind the tunnel (TCP and UDP on one remote port); yields its address."""
    iperf3 = _need("iperf3")
    port, remote = free_port(), free_port()
    log = tmp_path / "iperf3-server.log"
    proc = _start([iperf3, "-s", "-B", "127.0.0.1", "-p", str(port), "--forceflush"], log)
    try:
        # Not probed by connecting: iperf3 would count the probe as a (failed) test.
        wait_until(
            lambda: (
                proc.poll() is not None or "Server listening" in log.read_text(errors="replace")
            ),
            20,
            "the iperf3 server to listen",
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        listen = harness.listen()
        up = harness.up(
            listen, tcp=[f"ip=127.0.0.1:{port}:{remote}"], udp=[f"ipu=127.0.0.1:{port}:{remote}"]
        )
        assert up.public("ip") == up.public("ipu") == ("127.0.0.1", remote)
        yield "127.0.0.1", remote
    finally:
        kill_process_group(proc)


def _iperf3(address: tuple[str, int], *extra: str) -> dict[str, Any]:
    host, port = address
    argv = [_need("iperf3"), "-c", host, "-p", str(port), "-t", "2", "-J", "--connect-timeout",
            "5000", *extra]  # fmt: skip
    result = _run(argv)
    assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}"
    report: dict[str, Any] = json.loads(result.stdout)
    assert "error" not in report, report["error"]
    return report


def test_iperf3_tcp(iperf3_tunnel: tuple[str, int]) -> None:
    end = _iperf3(iperf3_tunnel)["end"]
    assert end["sum_received"]["bytes"] > 0
    assert end["sum_sent"]["bytes"] > 0


def test_iperf3_tcp_reverse(iperf3_tunnel: tuple[str, int]) -> None:
    end = _iperf3(iperf3_tunnel, "-R")["end"]
    assert end["sum_received"]["bytes"] > 0


def test_iperf3_udp(iperf3_tunnel: tuple[str, int]) -> None:
    end = _iperf3(iperf3_tunnel, "-u", "-b", "20M")["end"]
    assert end["sum_received"]["bytes"] > 0
    assert end["sum_received"]["packets"] > 0
