"""Run the echo peers (the Go `yamuxpeer` and `python -m mux`) as child processes, with time limits.

Children write to files, never to pipes nobody drains, so a chatty peer cannot block on a full
pipe. Servers are stopped (SIGTERM, then SIGKILL) when their `with` block ends, pass or fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The Python side of every test: our mux's echo tool, run by the interpreter running pytest.
PYTHON_MUX = [sys.executable, "-m", "mux"]
#: Time a server gets to print its `listening` line.
STARTUP_TIMEOUT_S = 10.0
#: Time a stopped server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0
#: Time a server gets to finish printing before a failing test reads its output.
REPORT_GRACE_S = 1.0

_LISTENING = re.compile(r"^listening (?P<host>\S+):(?P<port>\d+)$", re.MULTILINE)


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


#: hashicorp/yamux's warning for a WindowUpdate (Type:1) on a stream it has already dropped:
#: credit returned for a stream that just ended, harmless. A bulk test logs hundreds of them,
#: which pushed the lines that explain a failure (`echo failed`, a `Type:0` data frame for a
#: missing stream) out of the report; they are counted instead.
_MISSING_STREAM_UPDATE = re.compile(r"yamux: frame for missing stream: Vsn:\d+ Type:1 ")
#: Characters of a child's output a report shows: the head (where the first error usually is)
#: and the tail (how it ended), half each.
OUTPUT_LIMIT_CHARS = 8000


def without_noise(text: str) -> str:
    """`text` without the window-update warnings for dropped streams, with their count."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not _MISSING_STREAM_UPDATE.search(line)]
    dropped = len(lines) - len(kept)
    if not dropped:
        return text
    note = f"({dropped} `frame for missing stream ... Type:1` window-update warnings left out)\n"
    return note + "".join(kept)


def shorten(text: str, limit: int = OUTPUT_LIMIT_CHARS) -> str:
    """`text` without noise, and at most about `limit` characters of it: head and tail."""
    text = without_noise(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    head_end = text.rfind("\n", 0, half) + 1 or half  # whole lines where there are any
    tail_start = text.find("\n", len(text) - half) + 1 or len(text) - half
    left_out = text[head_end:tail_start].count("\n")
    return f"{text[:head_end]}... {left_out} lines left out ...\n{text[tail_start:]}"


def _output(path: Path) -> str:
    try:
        return shorten(path.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


@dataclass
class Server:
    """A running echo server and where it listens."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def address(self) -> str:
        """HOST:PORT for the clients' --connect."""
        return f"{self.host}:{self.port}"

    def report(self) -> str:
        """Stop the server, then describe it and its output, for a failing test's message.

        A server that is failing often is still printing why, so it gets a moment first.
        """
        try:
            self.proc.wait(timeout=REPORT_GRACE_S)
            state = f"had exited {self.proc.returncode}"
        except subprocess.TimeoutExpired:
            state = "was running"
            _stop(self.proc)
        return (
            f"server: {' '.join(self.argv)} ({state})\n"
            f"--- server stdout ---\n{_output(self.stdout_path)}"
            f"--- server stderr ---\n{_output(self.stderr_path)}"
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(command: Sequence[object], log_dir: Path, name: str) -> Iterator[Server]:
    """Start an echo server (listening on port 0) and wait for its `listening` line."""
    argv = [str(arg) for arg in command]
    stdout_path, stderr_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO_ROOT, env=_child_env()
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while (match := _LISTENING.search(stdout_path.read_text(errors="replace"))) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                state = "exited" if proc.poll() is not None else "did not print `listening` in time"
                raise AssertionError(
                    f"server {state}: {' '.join(argv)}\n"
                    f"--- stdout ---\n{_output(stdout_path)}--- stderr ---\n{_output(stderr_path)}"
                )
            time.sleep(0.02)
        host = match["host"].removeprefix("[").removesuffix("]")
        yield Server(argv, proc, host, int(match["port"]), stdout_path, stderr_path)
    finally:
        _stop(proc)


@dataclass
class ClientResult:
    """What a client run printed and how it ended."""

    argv: list[str]
    returncode: int | None  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> str:
        """The client's command line, outcome and output, for assertion messages."""
        if self.returncode is None:
            outcome = "killed at the time limit"
        else:
            outcome = f"exit {self.returncode}"
        return (
            f"client: {' '.join(self.argv)} ({outcome} after {self.seconds:.1f} s)\n"
            f"--- client stdout ---\n{self.stdout}--- client stderr ---\n{shorten(self.stderr)}"
        )


def run_client(command: Sequence[object], timeout_s: float) -> ClientResult:
    """Run a client to completion, killing it after `timeout_s`."""
    argv = [str(arg) for arg in command]
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            cwd=REPO_ROOT,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the child
        return ClientResult(
            argv, None, _text(exc.stdout), _text(exc.stderr), time.monotonic() - start
        )
    return ClientResult(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
