"""Fixtures of the load-balancing group tests: one cluster (listen + three up members) per
module, its processes' output attached to the report of a failing test."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
from e2e.harness import Harness

from .cluster import Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    funcargs = getattr(item, "funcargs", {})
    found = funcargs.get("cluster") or funcargs.get("harness")
    harness = found.harness if isinstance(found, Cluster) else found
    if report.failed and isinstance(harness, Harness):
        for name, text in harness.report():
            report.sections.append((f"muxtunnel {name} ({report.when})", text))
    return report


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """listen + three members of group `web`; tests reload what they need and leave the
    members running (a test that stops one starts it again)."""
    harness = Harness(tmp_path_factory.mktemp("cluster"))
    try:
        made = Cluster(harness)
        try:
            yield made
        finally:
            made.close()
    finally:
        harness.close()


@pytest.fixture
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("group"))
    try:
        yield h
    finally:
        h.close()
