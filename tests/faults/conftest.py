"""The end-to-end harness's fixtures (processes, local echo services, failure reports)."""

from __future__ import annotations

import pytest
from e2e.conftest import harness, pytest_runtest_makereport, tcp_echo

__all__ = ["harness", "pytest_runtest_makereport", "tcp_echo"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
