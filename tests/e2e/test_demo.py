"""`make run` (python -m muxtunnel.demo) as a person sees it: up starts once listen is
listening (no reconnect warnings first), the Ctrl-C hint stands on its own line, no visitor is
logged twice, and Ctrl-C stops it all with exit 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from .harness import Harness

START_S = 30.0


def test_make_run_demo(harness: Harness) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "muxtunnel.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=harness.env(),
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert demo.stdout is not None
    out = demo.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in out], daemon=True).start()

    def read_until(pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return line
        raise AssertionError(f"{pattern!r} not seen in {timeout_s} s:\n" + "\n".join(seen))

    try:
        address = read_until(r"public address: http://", START_S).split("http://")[1].strip()
        read_until(r"Ctrl-C stops the demo", 15)
        with urllib.request.urlopen(f"http://{address}", timeout=10) as reply:
            assert b"Hello through muxtunnel" in reply.read()
        visitors = 2  # the demo's own fetch and ours
        time.sleep(1.0)  # room for visitor lines, were there any
        os.kill(demo.pid, signal.SIGINT)
        assert demo.wait(20) == 0
        while not lines.empty():
            seen.append(lines.get().rstrip("\n"))
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(5)
    shown = "\n".join(seen)
    assert not [line for line in seen if "reconnecting" in line or "connection failed" in line], (
        shown
    )
    assert "  Ctrl-C stops the demo." in seen, shown  # a line of its own
    # A visitor that went well is a debug line, on each side; one that failed would be one
    # info line, listen's (up logs warnings only).
    visitor_lines = [line for line in seen if "visitor " in line]
    assert len(visitor_lines) <= visitors, shown
    assert all(line.startswith("listen | ") for line in visitor_lines), shown
