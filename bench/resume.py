"""Resume time: how long a visitor's bytes stop when `up`'s carrier is killed.

`listen` and `up` run as real processes (TLS as by default), with the delay proxy
(`bench.delayproxy`, in a thread of this process) between them: 0 ms, or `rtt_ms` / 2 each
way. A visitor sends a 64-byte numbered message every 5 ms through the tunnel to an echo
service and reads the echoes. Each repeat, the proxy resets the carrier both ways (a
middlebox's RST: `reset_connections()`), `up` resumes the session on a new connection, and we
note:

- `resume_s`: from the reset to the first echo of a message sent after it (the tunnel carries
  new bytes again, one round trip included);
- `stall_s`: the longest gap between two echoes around the reset (what the visitor felt);
- that every message came back, in order, with no error (else the repeat counts as lost).

``python -m bench.resume [--rtts 0,50] [--repeats 5]`` prints the figures; `python -m bench`
runs it too (its "resume" section) unless told `--no-resume`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import secrets
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from bench.delayproxy import DelayProxy
from bench.paths import LOCAL, REPO
from bench.proc import Proc, StartError, free_port

Address = tuple[str, int]
MESSAGE_BYTES = 64
INTERVAL_S = 0.005
#: How long a repeat waits for the tunnel to carry bytes again before it counts as lost.
RESUME_WAIT_S = 15.0
_HEADER = struct.Struct(">Qd")  # number, send time


class Visitor:
    """Numbered messages every `INTERVAL_S` through `address`, echoes timed as they arrive."""

    def __init__(self, address: Address) -> None:
        self.sock = socket.create_connection(address, timeout=RESUME_WAIT_S * 2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.arrivals: list[tuple[int, float, float]] = []  # number, sent at, arrived at
        self.error: str | None = None
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        number = 0
        try:
            while not self._stop.is_set():
                body = _HEADER.pack(number, time.monotonic())
                self.sock.sendall(body + bytes(MESSAGE_BYTES - len(body)))
                number += 1
                time.sleep(INTERVAL_S)
        except OSError as exc:
            self.error = self.error or f"send: {type(exc).__name__}"

    def _receive(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    if not self._stop.is_set():
                        self.error = self.error or "clean EOF while streaming"
                    return
                now = time.monotonic()
                buffer += data
                while len(buffer) >= MESSAGE_BYTES:
                    number, sent = _HEADER.unpack_from(buffer)
                    buffer = buffer[MESSAGE_BYTES:]
                    expected = len(self.arrivals)
                    if number != expected:
                        self.error = self.error or f"message {number} where {expected} was due"
                    self.arrivals.append((number, sent, now))
        except OSError as exc:
            if not self._stop.is_set():
                self.error = self.error or f"receive: {type(exc).__name__}"

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for thread in self._threads:
            thread.join(2)


def measure_once(visitor: Visitor, reset: Callable[[], int]) -> dict[str, Any]:
    """Reset the carrier under a streaming visitor; the figures of this one cut."""
    time.sleep(0.3)  # steady state first
    cut = time.monotonic()
    resets = reset()
    deadline = cut + RESUME_WAIT_S
    resumed: float | None = None
    while time.monotonic() < deadline and visitor.error is None:
        after = [a for (_, sent, a) in visitor.arrivals[-50:] if sent >= cut]
        if after:
            resumed = after[0]
            break
        time.sleep(0.002)
    time.sleep(0.2)
    times = [a for (_, _, a) in visitor.arrivals if cut - 1.0 <= a]
    stall = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return {
        "resets": resets,
        "resume_s": None if resumed is None else resumed - cut,
        "stall_s": stall,
        "error": visitor.error,
    }


@contextlib.contextmanager
def tunnel(tmp: Path, rtt_ms: float, exe: Path) -> Iterator[tuple[Address, DelayProxy]]:
    """listen + delay proxy + up (one echo service); yields the echo's public address."""
    token = secrets.token_hex(16)
    env = {"MUXTUNNEL_TOKEN": token}
    control, public = free_port(), free_port()
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp)))
        flags = ["--state-dir", str(state), "--log-format", "json"]
        echo = stack.enter_context(_proc("resume-echo", [sys.executable, "-m", "bench.echo"], tmp))
        m = echo.wait_line(r"^listening (\S+):(\d+)", 10)
        listen = stack.enter_context(
            _proc("resume-listen", [str(exe), "listen", "--bind", f"{LOCAL}:{control}", *flags],
                  tmp, env)
        )  # fmt: skip
        listen.wait_listening(control, 15)
        proxy = DelayProxy((LOCAL, 0), (LOCAL, control), latency_ms=rtt_ms / 2)
        address = stack.enter_context(proxy.running())
        up = stack.enter_context(
            _proc("resume-up", [
                str(exe), "up", "--server", f"{address[0]}:{address[1]}", "--no-console",
                "--tcp", f"echo={m.group(1)}:{m.group(2)}:{public}", *flags,
            ], tmp, env)
        )  # fmt: skip
        up.wait_line(r"^echo\s+tcp\s+\S+:(\d+)\s+->", 30)
        yield (LOCAL, public), proxy


@contextlib.contextmanager
def _proc(
    name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None
) -> Iterator[Proc]:
    proc = Proc(name, argv, log_dir=tmp, extra_env=env or {}, stop_signal=signal.SIGINT)
    try:
        yield proc
    finally:
        proc.stop()


def run(
    tmp: Path, rtts_ms: tuple[float, ...] = (0.0, 50.0), repeats: int = 5,
    exe: Path = REPO / ".venv" / "bin" / "muxtunnel", log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """The resume figures at each RTT: per repeat, and their median and worst."""
    results: dict[str, Any] = {}
    for rtt in rtts_ms:
        with tunnel(tmp, rtt, exe) as (address, proxy):
            visitor = Visitor(address)
            runs = []
            try:
                for _ in range(repeats):
                    runs.append(measure_once(visitor, lambda: _reset(proxy)))
                    if runs[-1]["error"] or runs[-1]["resume_s"] is None:
                        break
            finally:
                visitor.close()
        ok = [r for r in runs if r["resume_s"] is not None and not r["error"]]
        row = {
            "runs": runs,
            "lost": len(runs) - len(ok),
            "resume_s_median": statistics.median(r["resume_s"] for r in ok) if ok else None,
            "resume_s_max": max((r["resume_s"] for r in ok), default=None),
            "stall_s_max": max((r["stall_s"] for r in ok), default=None),
            "messages": len(visitor.arrivals),
        }
        results[f"{rtt:g}"] = row
        log(f"resume at {rtt:g} ms RTT: {_line(row)}")
    return results


T = TypeVar("T")


def on_proxy(proxy: DelayProxy, action: Callable[[], T]) -> T:
    """Run `action` on the proxy's own loop (it runs in another thread); what it returned."""
    done = threading.Event()
    box: list[T] = []

    def call() -> None:
        box.append(action())
        done.set()

    proxy._loop.call_soon_threadsafe(call)  # the proxy's documented way (see its module doc)
    if not done.wait(5):
        raise StartError("the delay proxy did not answer")
    return box[0]


def _reset(proxy: DelayProxy) -> int:
    """`reset_connections()` on the proxy's own loop."""
    return on_proxy(proxy, proxy.reset_connections)


def _line(row: dict[str, Any]) -> str:
    return (
        f"median {_ms(row['resume_s_median'])}, worst {_ms(row['resume_s_max'])}, longest "
        f"stall {_ms(row['stall_s_max'])}, {len(row['runs'])} cuts, {row['lost']} lost"
    )


def rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's section (`bench.report.SECTIONS`): a row per RTT."""
    header = ["RTT", "cuts", "lost", "resume median", "resume worst", "longest stall"]
    found = results.get("resume") or {}
    return header, [
        [f"{rtt} ms", str(len(row["runs"])), str(row["lost"]), _ms(row["resume_s_median"]),
         _ms(row["resume_s_max"]), _ms(row["stall_s_max"])]
        for rtt, row in found.items()
    ]  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__.split("\n")[0])
    ap.add_argument("--rtts", default="0,50", help="RTTs in ms through the delay proxy (0,50)")
    ap.add_argument("--repeats", type=int, default=5, help="carrier resets per RTT (5)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rtts = tuple(float(x) for x in a.rtts.split(","))
        run(Path(tmp), rtts, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
