"""Fixtures for the operations tests (helpers live in `helpers.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from .helpers import Pair, make_pair


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`cli.main` configures logging onto the stderr of its test (capsys): undo it after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A server pair, a second server pair (the man in the middle's) and a client pair."""
    folder: Path = tmp_path_factory.mktemp("certs")
    return {
        "server": make_pair(folder, "server"),
        "mitm": make_pair(folder, "mitm"),
        "client": make_pair(folder, "client", client=True),
    }
