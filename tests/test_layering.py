"""Import rules between the layers, checked on the source (no imports executed).

`mux/` is a library of its own: it never imports `muxtunnel`. Only the adapter and the helpers
around it may import anyio; the core stays free of I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MUX = ROOT / "mux"
ANYIO_ALLOWED = {"aio.py", "_anyio_seam.py", "testing.py", "_echo.py", "__main__.py", "__init__.py"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module `source` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


MUX_FILES = sorted(MUX.rglob("*.py"))


def test_the_mux_package_is_where_we_think() -> None:
    assert (MUX / "_connection.py").is_file()
    assert len(MUX_FILES) >= 10


@pytest.mark.parametrize("path", MUX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mux_never_imports_muxtunnel(path: Path) -> None:
    assert "muxtunnel" not in imported_modules(path.read_text())


@pytest.mark.parametrize("path", MUX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_only_the_adapter_imports_anyio(path: Path) -> None:
    if path.relative_to(MUX).as_posix() in ANYIO_ALLOWED:
        return
    imported = imported_modules(path.read_text())
    assert not imported & {"anyio", "asyncio", "trio", "socket", "selectors"}, imported


def test_imported_modules_sees_every_form() -> None:
    source = (
        "import anyio.abc\nfrom muxtunnel import x\ndef f():\n    import trio\nfrom . import y\n"
    )
    assert imported_modules(source) == {"anyio", "muxtunnel", "trio"}
