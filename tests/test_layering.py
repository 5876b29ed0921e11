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
ANYIO_ALLOWED = {
    "_anyio_seam.py",
    "_carrier.py",
    "_stream.py",
    "aio.py",
    "_echo.py",
    "__main__.py",
    "testing/pairs.py",
    "testing/peers.py",
}


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


# ------------------------------------------------------------------------------- mux: one way

#: Every module of `mux` and its layer. A module imports only modules of lower layers, so there
#: is no circle (not even one that only type checking would follow); a new module needs a row.
MUX_RANKS = {
    "_const": 0,
    "_events": 0,
    "_limits": 0,
    "_anyio_seam": 0,
    "_errors": 1,
    "_config": 1,
    "_frame": 1,
    "_window": 1,
    "_state": 2,
    "_connection": 3,  # the sans-IO core
    "_carrier": 4,
    "_stream": 4,
    "aio": 5,  # Session: the adapter
    "_echo": 6,
    "__init__": 7,  # the public surface
    "__main__": 8,
    "testing.frames": 6,  # test helpers: not in the wheel
    "testing.pairs": 7,
    "testing.peers": 7,
    "testing.__init__": 8,
}


def mux_module(path: Path) -> str:
    return ".".join(path.relative_to(MUX).with_suffix("").parts)


def mux_imports(source: str) -> set[str]:
    """The `mux` modules `source` imports (as `MUX_RANKS` names), wherever the statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        for module in modules:
            if module == "mux":
                found.add("__init__")
            elif module.startswith("mux."):
                name = module.removeprefix("mux.")
                found.add(name if name in MUX_RANKS else f"{name}.__init__")
    return found


def test_every_mux_module_has_a_rank() -> None:
    assert {mux_module(path) for path in MUX_FILES} == set(MUX_RANKS)


@pytest.mark.parametrize("path", MUX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mux_imports_point_down(path: Path) -> None:
    module = mux_module(path)
    upward = {
        imported: MUX_RANKS.get(imported)
        for imported in mux_imports(path.read_text())
        if MUX_RANKS.get(imported, 99) >= MUX_RANKS[module]
    }
    assert not upward, f"{module} (rank {MUX_RANKS[module]}) imports {upward}"


def test_mux_imports_sees_packages_and_type_only_imports() -> None:
    source = (
        "from mux import A\nimport mux.aio\nfrom mux.testing import B\n"
        "if TYPE_CHECKING:\n    from mux._stream import C\n"
    )
    assert mux_imports(source) == {"__init__", "aio", "testing.__init__", "_stream"}
