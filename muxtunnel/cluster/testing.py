"""A throwaway `redis-server` on loopback, for the registry's tests and benchmarks.

It listens on 127.0.0.1 at a free port, saves nothing (`--save ''`, no append-only file), keeps
its files in a directory of the caller's, and can crash (`stop`: SIGKILL, data gone, as a
restarted server without persistence), come back on the same port (`start`), or hang with its
connections open (`pause`/`resume`: SIGSTOP/SIGCONT, a server that stops answering).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerMissing", "TlsFiles"]

#: A fresh redis-server answers PING within tens of milliseconds; 10 s rides out a loaded
#: 2-core machine running other tests.
START_TIMEOUT_S = 10.0


class RedisServerMissing(RuntimeError):
    """No redis-server executable on this machine."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths for a TLS port: the server's certificate and key."""

    cert: str
    key: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `start` it (again) and `close` it when done."""

    def __init__(
        self, directory: Path, *, tls: TlsFiles | None = None, executable: str = "redis-server"
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise RedisServerMissing(
                f"{executable} not found: install Debian's redis-server package "
                "(scripts/install-system-deps.sh does)"
            )
        self.executable = path
        self.directory = directory
        self.tls = tls
        self.port = _free_port()
        self.tls_port = _free_port() if tls else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """rediss://127.0.0.1:TLS_PORT/0 (only with `tls`)."""
        if self.tls_port is None:
            raise RuntimeError("this server has no TLS port")
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def _argv(self) -> list[str]:
        argv = [self.executable, "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        argv += ["--daemonize", "no", "--loglevel", "warning"]
        argv += ["--logfile", str(self.directory / "redis-server.log")]
        if self.tls is not None:
            argv += ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key]
        return argv

    def start(self) -> None:
        """Start the server (on the same ports as before, if it ran) and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the server (SIGKILL) and wait: its data is gone, its clients see resets."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=START_TIMEOUT_S)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log file."""
        try:
            text = (self.directory / "redis-server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop the server for good."""
        self.stop()
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
