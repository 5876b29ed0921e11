"""CPU, memory and file descriptors of processes and process trees, read from /proc (no psutil).

The one home of the project's /proc readers: the benchmarks meter process trees with `Meter`,
and the tests' figures table (`tests/stress_report.py`) meters one process with these same
readers.

CPU: utime+stime+cutime+cstime summed over a process and its live descendants,
so children that exited and were reaped during a run (socat forks one per
connection) are still counted through their parent's cutime/cstime.

Memory: VmHWM (peak resident set) per process. ``reset_peak`` writes 5 to
/proc/PID/clear_refs, which restarts the peak at the current RSS, so a peak can
be measured per run. A run's "peak RSS" is the sum of the per-process peaks of
the tree (an upper bound of the peak of the sum).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return s[s.rindex(")") + 2 :].split()


def exists(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None:
                out[int(name)] = int(f[1])
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """The roots (if alive) and all their live descendants."""
    ppids = _ppids()
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in ppids]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int], *, children: bool = True) -> float:
    """utime+stime of the given processes, in seconds; with `children`, plus cutime+cstime
    (the children they have reaped)."""
    ticks = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            ticks += int(f[11]) + int(f[12])
            if children:
                ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def peak_kib(pid: int) -> int:
    """VmHWM: the peak resident set since start or since `reset_peak`."""
    return _status_kib(pid, "VmHWM:")


def fd_count(pid: int) -> int:
    """Open file descriptors of `pid` (0 if it is gone or not ours to read)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def reset_peak(pids: Iterable[int]) -> bool:
    """Restart VmHWM at the current RSS (writing 5 to clear_refs; needs the right to)."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def is_listening(port: int, *, udp: bool = False) -> bool:
    """Whether a TCP socket listens (or a UDP socket is bound) on `port`, any address."""
    files = ("/proc/net/udp", "/proc/net/udp6") if udp else ("/proc/net/tcp", "/proc/net/tcp6")
    want = f"{port:04X}"
    for path in files:
        with contextlib.suppress(OSError), open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state = parts[1], parts[3]
                if local.rsplit(":", 1)[1] == want and (udp or state == "0A"):
                    return True
    return False


@dataclass
class Usage:
    """What a set of process trees used during a window of time."""

    seconds: float
    cpu_pct: dict[str, float]  # per role, 100 = one core
    peak_rss_mib: dict[str, float]  # per role, sum of per-process peaks
    peak_is_window: bool  # False if clear_refs failed (peaks are since process start)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_pct.values())

    @property
    def rss_total(self) -> float:
        return sum(self.peak_rss_mib.values())


class Meter:
    """Measure CPU% and peak RSS of process trees (role -> root pids) over a window."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self._reset_ok = True

    def _trees(self) -> dict[str, set[int]]:
        return {role: descendants(roots) for role, roots in self.roles.items()}

    def start(self) -> None:
        trees = self._trees()
        self._reset_ok = all(reset_peak(t) for t in trees.values())
        self._cpu0 = {role: cpu_seconds(t) for role, t in trees.items()}
        self._t0 = time.monotonic()

    def stop(self) -> Usage:
        trees = self._trees()
        dt = max(time.monotonic() - self._t0, 1e-9)
        cpu = {
            role: 100.0 * (cpu_seconds(t) - self._cpu0.get(role, 0.0)) / dt
            for role, t in trees.items()
        }
        rss = {role: sum(peak_kib(p) for p in t) / 1024.0 for role, t in trees.items()}
        return Usage(dt, cpu, rss, self._reset_ok)


def current_rss_mib(roles: dict[str, list[int]]) -> dict[str, float]:
    return {
        role: sum(rss_kib(p) for p in descendants(roots)) / 1024.0 for role, roots in roles.items()
    }
