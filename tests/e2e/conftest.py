"""Fixtures for the end-to-end tests: real `muxtunnel` processes and local services on loopback.

A failing test's report gets one section per process it started (command line, exit state,
stdout and stderr), so a failure shows what listen and up logged.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .harness import Harness, TcpEchoServer, UdpEchoServer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    harness = getattr(item, "funcargs", {}).get("harness")
    if report.failed and isinstance(harness, Harness):
        for name, text in harness.report():
            report.sections.append((f"muxtunnel {name} ({report.when})", text))
    return report


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Starts muxtunnel processes; every one of them is stopped when the test ends."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def tcp_echo() -> Iterator[TcpEchoServer]:
    server = TcpEchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEchoServer]:
    server = UdpEchoServer()
    try:
        yield server
    finally:
        server.close()
