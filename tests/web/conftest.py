"""The end-to-end harness's fixtures (real `listen`/`up` processes, failure reports)."""

from __future__ import annotations

from e2e.conftest import harness, pytest_runtest_makereport

__all__ = ["harness", "pytest_runtest_makereport"]
