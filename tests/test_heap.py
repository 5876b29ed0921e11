"""glibc's malloc thresholds, set once per tunnel process (`muxtunnel.heap`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from muxtunnel.heap import tune_heap


def _in_child(code: str, **env: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    ).stdout.strip()  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_thresholds_are_set_on_glibc() -> None:
    assert _in_child("from muxtunnel.heap import tune_heap; print(tune_heap())") == "True"


def test_the_users_own_malloc_settings_stand() -> None:
    code = "from muxtunnel.heap import tune_heap; print(tune_heap())"
    assert _in_child(code, MALLOC_TRIM_THRESHOLD_="131072") == "False"
    assert _in_child(code, GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072") == "False"


def test_calling_it_again_is_harmless() -> None:
    assert tune_heap() == tune_heap()
