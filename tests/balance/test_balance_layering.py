"""The engine stays self-contained and pure: checked on the source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import muxtunnel.balance

PACKAGE = Path(muxtunnel.balance.__file__).resolve().parent
FILES = sorted(PACKAGE.glob("*.py"))
#: The one module that does I/O: it connects to the member's local target.
IO_ALLOWED = {"probe.py", "__init__.py"}
IO_MODULES = {"anyio", "asyncio", "trio", "socket", "selectors", "time", "h11", "threading"}
#: What the engine may use of the rest of the project: the one doubling-count logger.
SHARED = {"muxtunnel.log"}


def _imports(path: Path) -> set[str]:
    """Full names of the modules `path` imports (relative imports resolved to the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.add(f"muxtunnel.balance.{module}".rstrip(".") if node.level else module)
    return names


def test_the_package_is_where_we_think() -> None:
    assert {"group.py", "circuit.py", "ratelimit.py", "probe.py"} <= {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_balance_imports_nothing_else_of_muxtunnel(path: Path) -> None:
    ours = {name for name in _imports(path) if name.split(".")[0] == "muxtunnel"} - SHARED
    assert all(name.startswith("muxtunnel.balance") for name in ours), ours


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_only_the_prober_does_io_or_reads_a_clock(path: Path) -> None:
    if path.name in IO_ALLOWED:
        return
    tops = {name.split(".")[0] for name in _imports(path)}
    assert not tops & IO_MODULES, tops & IO_MODULES


def test_imports_sees_relative_and_nested_forms(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text(
        "import anyio.abc\nfrom . import y\ndef f():\n    from muxtunnel import cli\n"
    )
    assert _imports(source) == {"anyio.abc", "muxtunnel.balance", "muxtunnel"}
