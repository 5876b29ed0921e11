"""The live panel of `muxtunnel up` on a real pseudo-terminal at 80x24, during a download.

What a person sees, through a terminal emulator: one panel (no stale copies of it down the
screen, whatever is logged meanwhile), each service's public address whole on the address lines
above it and in its row, log lines above the panel, and an out/s rate that moves while a
visitor downloads and falls back when the download stops.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import IO_TIMEOUT_S, Harness, split_host_port
from .terminal import TerminalProc

#: How fast the local service sends: slow enough that the rate is the visitor's, not a burst.
CHUNK_BYTES = 32 * 1024
CHUNK_EVERY_S = 0.05  # 640 KiB/s
PANEL_HEADER = re.compile(r"muxtunnel server \S+ +(online|connecting)")
RATE = re.compile(r"(\d+(?:\.\d)?) (B|KiB|MiB|GiB)/s")


class SlowSource:
    """A local service that sends CHUNK_BYTES every CHUNK_EVERY_S to each visitor, until told."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sending = threading.Event()
        self.sending.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + 60
        with conn:
            while not self.closed and time.monotonic() < deadline:
                if self.sending.is_set():
                    try:
                        conn.sendall(b"x" * CHUNK_BYTES)
                    except OSError:
                        return
                time.sleep(CHUNK_EVERY_S)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture
def source() -> Iterator[SlowSource]:
    s = SlowSource()
    yield s
    s.close()


def _download(host: str, port: int, stop: threading.Event, got: list[int]) -> None:
    with socket.create_connection((host, port), timeout=IO_TIMEOUT_S) as sock:
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            got[0] += len(data)


def _rates(line: str) -> list[float]:
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    return [float(n) * scale[unit] for n, unit in RATE.findall(line)]


def test_panel_at_80x24_during_a_download(
    harness: Harness, source: SlowSource, tmp_path: Path
) -> None:
    listen = harness.listen()
    names = ["bulk", "a-service-with-a-long-name-to-shorten", "udp-thing"]
    args = [
        "up", "--server", listen.address, "--token", harness.token, "--log-format", "console",
        "--tcp", f"{names[0]}=127.0.0.1:{source.port}",
        "--tcp", f"{names[1]}=[::1]:9",
        "--udp", f"{names[2]}=127.0.0.1:9",
    ]  # fmt: skip
    term = TerminalProc(args, harness.env())
    stop = threading.Event()
    try:
        lines = term.wait_screen(
            lambda lines: sum(bool(re.match(rf"{n} (tcp|udp) \S+ -> ", ln))
                              for n in names for ln in lines) == 3
            and any("online" in ln for ln in lines),
            30, "three address lines and an online panel",
        )  # fmt: skip
        publics = {}
        for line in lines:
            match = re.match(r"(\S+) (tcp|udp) (\S+) -> (\S+)$", line)
            if match:
                publics[match[1]] = match[3]
        assert publics[names[1]] and publics[names[1]].count(":") == 1
        # The IPv6 local address is bracketed on the address line.
        assert any(line.endswith("-> [::1]:9") for line in lines), lines
        got = [0]
        host, port = split_host_port(publics["bulk"])
        visitor = threading.Thread(target=_download, args=(host, port, stop, got), daemon=True)
        visitor.start()
        seen: list[float] = []
        frames: list[list[str]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(seen) < 6 or max(seen) == 0):
            time.sleep(0.5)
            screen = term.screen()
            frames.append(screen)
            # One panel, and only one, whatever was logged meanwhile.
            headers = [line for line in screen if PANEL_HEADER.search(line)]
            assert len(headers) == 1, "\n".join(screen)
            bulk = [line for line in screen if line.lstrip().startswith("bulk ") and "/s" in line]
            assert len(bulk) == 1, "\n".join(screen)
            assert publics["bulk"] in bulk[0], "the public address is cut:\n" + "\n".join(screen)
            rates = _rates(bulk[0])
            assert len(rates) == 2, f"a rate wrapped or went missing: {bulk[0]!r}"
            seen.append(rates[1])
        assert got[0] > 0
        moving = [rate for rate in seen if rate > 0]
        assert len(moving) >= 3, f"out/s stayed still during the download: {seen}"
        # Slow source: the rate is the visitor's (640 KiB/s), never a buffer's burst of MiB/s.
        assert max(moving) < 4 * CHUNK_BYTES / CHUNK_EVERY_S, seen
        # Every row fits: the long name is shortened, its public address is not.
        for name in names[1:]:
            rows = [line for line in frames[-1] if publics[name] in line and "/s" in line]
            assert len(rows) == 1, "\n".join(frames[-1])
            assert all(len(line) <= 80 for line in frames[-1])
        source.sending.clear()  # the download pauses: the rate falls to 0
        term.wait_screen(
            lambda lines: any(line.lstrip().startswith("bulk ") and line.endswith(" 0 B/s")
                              for line in lines),
            10, "out/s back to 0 B/s",
        )  # fmt: skip
        # Visitors of the service with nothing behind it: up logs them (at counts 1, 2 and 4)
        # while the panel shows; the lines go above the panel, which stays one.
        dead = split_host_port(publics[names[1]])
        for _ in range(4):
            with socket.create_connection(dead, timeout=IO_TIMEOUT_S) as sock:
                sock.settimeout(IO_TIMEOUT_S)
                try:  # reset or closed: its local service is not there
                    assert sock.recv(1) == b""
                except ConnectionResetError:
                    pass
        logged = "local service unreachable"
        screen = term.wait_screen(
            lambda lines: sum(logged in line for line in lines) >= 3, 15, f"three {logged!r}"
        )
        assert len([line for line in screen if PANEL_HEADER.search(line)]) == 1, screen
        last_log = max(i for i, line in enumerate(screen) if logged in line)
        assert "cannot connect to [::1]:9" in term.raw()  # bracketed, as everywhere
        assert last_log < screen.index(next(ln for ln in screen if PANEL_HEADER.search(ln)))
        (tmp_path / "panel-80x24.txt").write_text("\n".join(frames[-1]) + "\n")
        (tmp_path / "screen-80x24.txt").write_text("\n".join(screen) + "\n")
    finally:
        stop.set()
        assert term.close() == 0, term.raw()[-3000:]
