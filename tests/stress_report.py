"""The figures table: what each attack and fault test measured, printed at the end of the run.

Tests take the `figures` fixture and call `figures.record(label, **values)` with what matters
for their row: peak RSS, file descriptors, CPU seconds, the honest session's latency, and the
bound they asserted. `pytest_terminal_summary` (wired in `tests/conftest.py`) prints one table
row per record, so `make stress` shows regressions at a glance; with `MUXTUNNEL_FIGURES=FILE`
the records are also written to FILE as JSON.

`ProcMeter` meters one process over a window with the project's /proc readers
(`bench/procstat.py`).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.procstat import cpu_seconds, fd_count, peak_kib, reset_peak, rss_mib

FIGURES_KEY = pytest.StashKey["Figures"]()
#: Columns printed for every record, in this order; anything else goes to "other". Where a
#: test runs a tunnel, RSS and fds are `listen`'s and the `up_` columns `up`'s, and the honest
#: columns are the neighbour's during the attack (its share of successful round trips, and
#: their latency): together the shared-fate table of `make stress`.
COLUMNS = (
    ("honest_ok_pct", "honest ok %"),
    ("honest_p50_ms", "honest p50 ms"),
    ("honest_p99_ms", "honest p99 ms"),
    ("rss_mib", "peak RSS MiB"),
    ("rss_growth_mib", "RSS +MiB"),
    ("fds", "peak fds"),
    ("up_rss_mib", "up RSS MiB"),
    ("up_fds", "up fds"),
    ("cpu_s", "CPU s"),
    ("seconds", "seconds"),
)


def up_figures(meter: ProcMeter) -> dict[str, float | int]:
    """The `up` columns, from a meter of the `up` process."""
    return {"up_rss_mib": meter.peak_rss_mib, "up_fds": meter.peak_fds}


@dataclass
class Record:
    label: str
    test: str
    values: dict[str, Any] = field(default_factory=dict)


class Figures:
    """Session-wide collector of `Record`s."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._lock = threading.Lock()

    def record(self, label: str, test: str = "", **values: Any) -> None:
        with self._lock:
            self.records.append(Record(label, test, values))

    def rows(self) -> list[list[str]]:
        rows = [["figure", *(title for _, title in COLUMNS), "other"]]
        known = {key for key, _ in COLUMNS}
        for rec in sorted(self.records, key=lambda r: r.label):
            row = [rec.label]
            for key, _ in COLUMNS:
                row.append(_fmt(rec.values.get(key)))
            other = [f"{k}={_fmt(v)}" for k, v in rec.values.items() if k not in known]
            row.append(" ".join(other))
            rows.append(row)
        return rows

    def table(self) -> list[str]:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for n, row in enumerate(rows):
            cells = [
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
            if n == 0:
                lines.append("-" * min(len(lines[0]), 160))
        return lines

    def dump(self, path: str) -> None:
        data = [{"label": r.label, "test": r.test, **r.values} for r in self.records]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


# ------------------------------------------------------------------------------------ /proc


class ProcMeter:
    """Peak RSS, peak fds and CPU seconds of one process over a window (`with meter:`).

    A sampler thread polls the fd count (and RSS when VmHWM cannot be reset) every
    `interval_s`, so short peaks in between may be missed; VmHWM catches RSS peaks exactly.
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.baseline_fds = fd_count(pid)
        self.baseline_rss_mib = rss_mib(pid)
        self.peak_fds = self.baseline_fds
        self.peak_rss_mib = self.baseline_rss_mib
        self.cpu_s = 0.0
        self.seconds = 0.0
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProcMeter:
        self.baseline_fds = fd_count(self.pid)
        self.baseline_rss_mib = rss_mib(self.pid)
        self.peak_fds = self.baseline_fds
        self.peak_rss_mib = self.baseline_rss_mib
        self._hwm = reset_peak([self.pid])
        self._cpu0 = cpu_seconds([self.pid], children=False)
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        self.peak_fds = max(self.peak_fds, fd_count(self.pid))
        self.peak_rss_mib = max(self.peak_rss_mib, rss_mib(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()
        if self._hwm:
            self.peak_rss_mib = max(self.peak_rss_mib, peak_kib(self.pid) / 1024)
        self.cpu_s = cpu_seconds([self.pid], children=False) - self._cpu0
        self.seconds = time.monotonic() - self._t0

    @property
    def rss_growth_mib(self) -> float:
        return self.peak_rss_mib - self.baseline_rss_mib

    def figures(self) -> dict[str, float | int]:
        return {
            "rss_mib": self.peak_rss_mib,
            "rss_growth_mib": self.rss_growth_mib,
            "fds": self.peak_fds,
            "cpu_s": self.cpu_s,
            "seconds": self.seconds,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_figures(samples_s: Iterable[float]) -> dict[str, float]:
    values = [s * 1000 for s in samples_s]
    return {
        "honest_p50_ms": statistics.median(values) if values else 0.0,
        "honest_p99_ms": percentile(values, 0.99),
    }


# ------------------------------------------------------------------------------------ pytest


def configure(config: pytest.Config) -> None:
    config.stash[FIGURES_KEY] = Figures()
    config.addinivalue_line(
        "markers", "stress: attack and fault tests whose figures `make stress` tabulates"
    )


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES_KEY, None)
    if not figures or not figures.records:
        return
    terminalreporter.write_sep("=", "stress figures")
    for line in figures.table():
        terminalreporter.write_line(line)
    path = os.environ.get("MUXTUNNEL_FIGURES")
    if path:
        figures.dump(path)
        terminalreporter.write_line(f"(written to {path})")


class BoundFigures:
    """What the `figures` fixture hands a test: `record` with the test's id filled in."""

    def __init__(self, figures: Figures, test: str) -> None:
        self._figures = figures
        self._test = test

    def record(self, label: str, **values: Any) -> None:
        self._figures.record(label, self._test, **values)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> BoundFigures:
    """Record figures for the end-of-run table: `figures.record("row 19 slowloris", fds=...)`."""
    return BoundFigures(request.config.stash[FIGURES_KEY], request.node.nodeid)
