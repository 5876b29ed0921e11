"""Fixtures of the virtual-host tests; peers and clients live in `helpers.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import Proxy, running_proxy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """The engine with default limits, on loopback, no routes yet."""
    with running_proxy() as running:
        yield running
