"""Fixtures for the interop tests: the Go reference peer, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .goyamux import GoToolchainMissing, build_yamux_peer


def _in_ci() -> bool:
    """CI systems set CI (GitHub Actions, GitLab: "true"); "0" or "false" count as unset."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def yamux_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled `yamuxpeer` binary.

    Without Go or the yamux sources the interop tests skip locally, but fail when `CI` is set:
    in CI they are the only check that we interoperate with hashicorp/yamux, so they must run.
    """
    try:
        return build_yamux_peer(tmp_path_factory.mktemp("yamuxpeer"))
    except GoToolchainMissing as exc:
        if _in_ci():
            pytest.fail(f"interop tests cannot run in CI: {exc}", pytrace=False)
        pytest.skip(f"interop tests need the Go yamux peer: {exc}")
