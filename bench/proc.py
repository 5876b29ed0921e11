"""Child processes of a bench run: start, wait for readiness, and always stop.

Every process is started in its own session (so a terminal Ctrl-C reaches only the
bench, which then stops its children in order), with PR_SET_PDEATHSIG so it dies
if the bench itself is killed, and is registered so that ``stop_all`` (called at
exit) kills whatever is left, descendants included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import procstat

Address = tuple[str, int]

_PR_SET_PDEATHSIG = 1
_live: dict[int, Proc] = {}
_lock = threading.Lock()
_given_ports: set[int] = set()


class StartError(RuntimeError):
    """A process did not come up; the message is shown as the skip note."""


def _child_setup() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    """A started child whose output (stdout+stderr) is collected line by line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.stop_signal = stop_signal
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.log_path = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        if extra_env:
            full_env.update(extra_env)
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_child_setup,  # only the main thread spawns children
            )
        except OSError as e:
            raise StartError(f"{name}: cannot run {self.argv[0]}: {e}") from e
        self.pid = self.popen.pid
        with _lock:
            _live[self.pid] = self
        self._reader = threading.Thread(target=self._read, name=f"out-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with open(self.log_path, "wb") as log:
            for raw in self.popen.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 5) -> str:
        with self._cond:
            return " | ".join(line.strip() for line in self.lines[-n:] if line.strip())

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for an output line matching `pattern` (re.search); StartError on timeout/exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive() and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        raise StartError(self._why(f"no line matching {pattern!r}"))

    def wait_listening(self, port: int, timeout: float, *, udp: bool = False) -> None:
        """Wait until some socket listens on `port` (read from /proc/net, no connect)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if procstat.is_listening(port, udp=udp):
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise StartError(self._why(f"not listening on port {port}"))

    def _why(self, what: str) -> str:
        state = "running" if self.alive() else f"exited {self.popen.returncode}"
        out = self.tail()
        return f"{self.name}: {what} ({state}){': ' + out if out else ''}"

    def stop(self, timeout: float = 3.0) -> int | None:
        """Signal the process and its descendants, escalate to SIGKILL after `timeout`."""
        try:
            kill_tree(self.pid, self.stop_signal, timeout)
        finally:
            with _lock:
                _live.pop(self.pid, None)
            self._reader.join(1)
        return self.popen.returncode


def kill_tree(pid: int, sig: int, timeout: float) -> None:
    """Send `sig` to pid and its descendants; SIGKILL whatever is left after `timeout`."""
    tree = [pid, *sorted(procstat.descendants([pid]) - {pid})]
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    popen = _live.get(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            popen.popen.poll()
        if not any(procstat.exists(p) for p in tree):
            break
        time.sleep(0.05)
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.popen.wait(2)


def stop_all() -> None:
    """Stop every process this module started that is still registered."""
    with _lock:
        procs = list(_live.values())
    for p in reversed(procs):
        with contextlib.suppress(Exception):
            p.stop(timeout=1.0)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def free_port(udp_too: bool = False) -> int:
    """A loopback port that is free now (and for UDP too if asked), not handed out before."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in _given_ports:
            continue
        if udp_too:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    raise StartError("no free port found")


def wait_connectable(addr: Address, timeout: float) -> None:
    """For servers we own (iperf3, echo): wait until a TCP connect succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(addr, timeout=1).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise StartError(f"{addr[0]}:{addr[1]} not reachable: {e}") from e
            time.sleep(0.05)
