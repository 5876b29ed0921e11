"""The optional mypyc build (setup.py): compiled when asked and able, pure Python otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _wheel(tmp_path: Path, **env: str) -> list[str]:
    """Build a wheel of a copy of the checkout; the names of the files in it."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "tests")
    )
    out = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps"]
    subprocess.run(
        [*pip, "-w", str(out), str(src)],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.mark.slow
def test_without_a_compiler_the_build_is_pure_python(tmp_path: Path) -> None:
    names = _wheel(tmp_path, MUXTUNNEL_MYPYC="1", CC="/bin/false")
    assert "mux/_connection.py" in names
    assert not [name for name in names if name.endswith(".so")]


@pytest.mark.slow
def test_asked_for_and_able_the_core_is_compiled(tmp_path: Path) -> None:
    names = _wheel(tmp_path, MUXTUNNEL_MYPYC="1")
    for module in ("_connection", "_window", "_frame"):
        assert any(n.startswith(f"mux/{module}.cpython-") and n.endswith(".so") for n in names)
