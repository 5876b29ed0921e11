"""A `muxtunnel` process on a pseudo-terminal, and what a person would see on its screen.

`TerminalProc` starts the command with stdin, stdout and stderr on one pty of a given size, so
that the process believes a person is watching (`isatty()` is true, the live panel shows), and
feeds every byte it writes to `pyte`, a terminal emulator: `screen()` is the 80x24 grid a real
terminal would show now, cursor movements and erasures applied, and `raw()` all that was
written. Both the reader thread and the process end with `close()`.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Sequence
from typing import Any

import pyte


class TerminalProc:
    """`python -m muxtunnel ARGS` on a `columns` x `lines` pseudo-terminal."""

    def __init__(
        self, args: Sequence[object], env: dict[str, str], columns: int = 80, lines: int = 24
    ) -> None:
        self.columns, self.lines = columns, lines
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "muxtunnel", *map(str, args)],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            start_new_session=True,
        )
        os.close(follower)
        self._fd = leader
        self._screen = pyte.Screen(columns, lines)
        self._stream = pyte.ByteStream(self._screen)
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # EIO: the process and its children closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._raw += data
                self._stream.feed(data)

    def screen(self) -> list[str]:
        """The screen's lines now, as a terminal would show them (trailing blanks cut)."""
        with self._lock:
            return [line.rstrip() for line in self._screen.display]

    def raw(self) -> str:
        """Everything written so far, escape sequences included."""
        with self._lock:
            return self._raw.decode("utf-8", "replace")

    def wait_screen(self, predicate: Any, timeout_s: float, what: str) -> list[str]:
        """Poll the screen until `predicate(lines)` holds; after `timeout_s`, fail showing it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.screen()
            if predicate(lines):
                return lines
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        shown = "\n".join(self.screen())
        raise AssertionError(f"{what}: not on the screen after {timeout_s} s:\n{shown}")

    def close(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        os.close(self._fd)
        return self.process.returncode
