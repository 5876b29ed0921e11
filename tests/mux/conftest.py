"""Fixtures for the mux tests.

There is deliberately no `__init__.py` here: with pytest's default import mode a package named
`mux` under `tests/` would shadow the real `mux` package. Test modules in this folder therefore
need file names unique across `tests/`.
"""

from __future__ import annotations

import pytest
import testenv

from mux.testing import FEED_MODES, FrameBuilder


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Every async test here runs on plain asyncio and on uvloop (production's loop); the
    pure-core tests take no event loop and run once."""
    return testenv.anyio_backend(request.param)


@pytest.fixture
def frames() -> FrameBuilder:
    return FrameBuilder()


@pytest.fixture(params=FEED_MODES)
def feed_mode(request: pytest.FixtureRequest) -> str:
    """Each core test that feeds bytes runs whole, byte by byte, and with trailing bytes."""
    return request.param
