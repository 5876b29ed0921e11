"""Microbenchmarks of the multiplexer (pytest-benchmark). Run them with

    .venv/bin/python -m pytest bench/micro --benchmark-enable -q

Figures that pytest-benchmark's table does not show (MB/s, latency percentiles) are collected
with the `figures` fixture and printed at the end of the run. Nothing here asserts a speed.
"""

from __future__ import annotations

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def figures() -> list[str]:
    """Append human-readable result lines; they are printed after the benchmark table."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("mux microbenchmark figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
