"""Fixtures for the operations tests (helpers live in `helpers.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Pair, make_pair


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A server pair, a second server pair (the man in the middle's) and a client pair."""
    folder: Path = tmp_path_factory.mktemp("certs")
    return {
        "server": make_pair(folder, "server"),
        "mitm": make_pair(folder, "mitm"),
        "client": make_pair(folder, "client", client=True),
    }
