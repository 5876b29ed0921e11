"""Fixtures for the interop tests: the Go reference peer, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from testenv import skip_or_fail

from .goyamux import GoToolchainMissing, build_yamux_peer


@pytest.fixture(scope="session")
def yamux_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled `yamuxpeer` binary.

    Without Go or the yamux sources the interop tests skip locally, but fail when `CI` is set:
    in CI they are the only check that we interoperate with hashicorp/yamux, so they must run.
    """
    try:
        return build_yamux_peer(tmp_path_factory.mktemp("yamuxpeer"))
    except GoToolchainMissing as exc:
        skip_or_fail(f"interop tests need the Go yamux peer: {exc}")
