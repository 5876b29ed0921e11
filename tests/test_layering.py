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
    "_resumable.py",
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


# --- muxtunnel: ranks; both packages: no import circles ---
#
# The import graph is computed from the source: every import statement, wherever it is (inside
# functions and `if TYPE_CHECKING:` too), resolved to the deepest module of our own packages it
# names (`from muxtunnel import control` is muxtunnel.control; `from muxtunnel import
# __version__` is muxtunnel itself).

MUXTUNNEL = ROOT / "muxtunnel"

#: Each module or subpackage of `muxtunnel` and its rank: a module imports only modules of the
#: same or a lower rank. Status flows up as snapshots, changes flow down as method calls.
MUXTUNNEL_RANKS = {
    # the vocabulary: resolved config, status snapshots
    "__init__": 0,
    "model": 0,
    "status": 0,
    "group_status": 0,
    "cluster_status": 0,
    "cluster_config": 0,
    "path_config": 0,
    "resilience_status": 0,
    # the load-balancing engine's settings: vocabulary the resolved config holds (stdlib only)
    "balance.settings": 0,
    # building blocks that need only the vocabulary
    "specs": 1,
    "auth": 1,
    "visitauth": 1,  # visitor tokens: their tags and sealed keys
    "sources": 1,
    "log": 1,
    "termlog": 1,
    "transport": 1,  # the network seam
    "accept": 1,  # its accept loop (stdlib and anyio only)
    "datagrams": 1,  # its UDP half
    "sockets": 2,  # its part for protocol-driven sockets (the relay)
    "argv": 1,  # masks secrets in the command line the kernel shows
    "certgen": 1,  # a self-signed pair; runs as a script too (no package imports)
    "heap": 1,  # glibc's malloc thresholds for a tunnel process
    "files": 1,  # keys, certificates, known hosts: created, never followed
    "compress": 1,
    "quota": 1,
    "admission": 2,
    "framing": 1,
    "bodies": 1,  # where an HTTP message body ends (the inspector's tap)
    # wrappers, protocols and meters over the seam
    "tls": 2,
    "trust": 3,  # the state directory: the server's own pair, the client's known servers
    "limits": 2,
    "proxy": 2,
    "relay": 2,
    "splice": 2,  # two mux streams relayed by callbacks (a private service's two hops)
    "captures": 1,  # recorded HTTP exchanges: what the inspector shows
    "httptap": 2,  # the inspector's passive HTTP parser, a wrapper of the local socket
    "control": 2,
    "resume": 2,  # the handshake that resumes a session on a new carrier
    "fields": 1,  # checks of control message fields
    "hello": 1,  # Hello and Challenge (`control` decodes them)
    "visitmsg": 1,  # the control messages of private services (`control` decodes them)
    # engines a server or client drives: pure decisions plus their own narrow I/O seams
    "balance": 1,
    "cluster": 2,
    # the HTTP/HTTPS virtual-host engine the server drives (pipes with proxy, dials via transport)
    "vhost": 3,
    # what both sides share
    "config": 3,
    "udp": 3,
    "udpflow": 3,  # the non-public ends of a flow (client socket, visitor splice)
    "forward": 3,
    # decisions and consumers of snapshots: they never see the server or the client
    "reload": 4,
    "web": 4,
    "console": 4,
    "statusview": 4,
    # the two sides
    "server": 5,
    "client": 5,
    # the composition root, and the command line in front of it
    "app": 6,
    "tools": 6,  # status and cert: the commands that run no tunnel
    "cli": 7,
    "flags": 6,
    "__main__": 7,
    "demo": 7,
}
#: Same rank, yet never one importing the other.
APART = {("server", "client"), ("client", "server")}
#: Modules whose `rich` import must wait for a terminal: imported only inside functions.
TERMINAL_ONLY = {"muxtunnel.console", "muxtunnel.statusview", "muxtunnel.termlog"}


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package is its __init__)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _deepest(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for each import of our modules in `path`."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    edges = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = _deepest(name, known)
            if target is not None and target != module:
                edges.append((target, id(node) in top_level))
    return edges


def import_graph(package: Path) -> dict[str, set[str]]:
    known = module_files(package)
    return {
        module: {target for target, _ in import_edges(module, path, known)}
        for module, path in known.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the strongly connected components of `graph`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return components


def rank_key(module: str) -> str:
    """`muxtunnel.server._session` -> "server"; `muxtunnel` -> "__init__"; a module ranked on
    its own (`muxtunnel.balance.settings`) -> "balance.settings"."""
    parts = module.split(".")
    if len(parts) > 2 and ".".join(parts[1:3]) in MUXTUNNEL_RANKS:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else "__init__"


MUXTUNNEL_MODULES = module_files(MUXTUNNEL)


def test_strongly_connected_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d"], ["e"]]


def test_import_edges_resolve_every_form(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "b", "sub/__init__", "sub/c"):
        (package / f"{name}.py").write_text("")
    (package / "sub" / "d.py").write_text(
        "from pkg import a, VERSION\nimport pkg.b\nfrom . import c\n"
        "def f():\n    from ..sub.c import x\n"
    )
    known = module_files(package)
    edges = import_edges("pkg.sub.d", package / "sub" / "d.py", known)
    assert edges == [
        ("pkg.a", True), ("pkg", True), ("pkg.b", True), ("pkg.sub.c", True), ("pkg.sub.c", False)
    ]  # fmt: skip


def test_every_muxtunnel_module_has_a_rank() -> None:
    keys = {rank_key(module) for module in MUXTUNNEL_MODULES}
    assert keys == set(MUXTUNNEL_RANKS), keys ^ set(MUXTUNNEL_RANKS)


@pytest.mark.parametrize("module", sorted(MUXTUNNEL_MODULES))
def test_muxtunnel_imports_point_down(module: str) -> None:
    mine = rank_key(module)
    for target, _ in import_edges(module, MUXTUNNEL_MODULES[module], MUXTUNNEL_MODULES):
        theirs = rank_key(target)
        assert MUXTUNNEL_RANKS[theirs] <= MUXTUNNEL_RANKS[mine], f"{module} imports {target}"
        assert (mine, theirs) not in APART, f"{module} imports {target}"


@pytest.mark.parametrize("package", [MUX, MUXTUNNEL], ids=lambda p: p.name)
def test_no_import_circles(package: Path) -> None:
    circles = [c for c in strongly_connected(import_graph(package)) if len(c) > 1]
    assert not circles, circles


def _mux_exports() -> set[str]:
    for node in ast.parse((MUX / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return set(ast.literal_eval(node.value))
    raise AssertionError("mux/__init__.py has no __all__")


@pytest.mark.parametrize("module", sorted(MUXTUNNEL_MODULES))
def test_muxtunnel_imports_only_what_mux_exports(module: str) -> None:
    exported = _mux_exports()
    for node in ast.walk(ast.parse(MUXTUNNEL_MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            assert not [a.name for a in node.names if a.name.startswith("mux.")], module
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mux":
            assert node.module == "mux", f"{module}: from {node.module} import ..."
            assert {a.name for a in node.names} <= exported, module


@pytest.mark.parametrize("module", sorted(MUXTUNNEL_MODULES))
def test_rich_waits_for_a_terminal(module: str) -> None:
    path = MUXTUNNEL_MODULES[module]
    if module not in TERMINAL_ONLY:
        assert "rich" not in imported_modules(path.read_text()), module
    for target, top_level in import_edges(module, path, MUXTUNNEL_MODULES):
        assert not (target in TERMINAL_ONLY and top_level), f"{module} imports {target} at load"


#: Modules that may catch the socket layer's own exceptions, and why.
FOREIGN_EXCEPTIONS_ALLOWED = {
    "muxtunnel.transport": "the network seam: maps them to TransportError and anyio's errors",
    "muxtunnel.datagrams": "the network seam's UDP half: bind errors, a 0-byte send's errors",
    "muxtunnel.sockets": "the network seam for protocol-driven sockets: connect, abort",
    "muxtunnel.accept": "the network seam's accept loop: accept errors back off",
    "muxtunnel.tls": "the TLS handshake: ssl's errors are OSErrors, mapped to TlsError; files",
    "muxtunnel.config._tree": "reading config files",
    "muxtunnel.config._values": "reading token files",
    "muxtunnel.argv": "reading /proc/self/stat and /proc/self/cmdline",
    "muxtunnel.heap": "loading the C library (mallopt)",
    "muxtunnel.trust": "reading and writing the known-hosts file",
    "muxtunnel.reload": "stat() of the config file",
    "muxtunnel.tools": "writing certificate files (`muxtunnel cert`)",
    "muxtunnel.log": "isatty() of a stream that may have none",
    "muxtunnel.statusview": "urllib's errors: the HTTP client of `muxtunnel status`",
    "muxtunnel.balance.probe": "health probes: a refused or reset connect is a probe result",
    "muxtunnel.cluster._redis": "the registry seam: redis and socket errors -> RegistryUnavailable",
    "muxtunnel.cluster.testing": "a throwaway redis-server for tests: its process and port",
}
_FOREIGN = {"OSError", "AttributeError", "ConnectionError", "ConnectionResetError",
            "BrokenPipeError", "EnvironmentError", "IOError", "error"}  # fmt: skip


@pytest.mark.parametrize("module", sorted(MUXTUNNEL_MODULES))
def test_only_the_seams_catch_foreign_exceptions(module: str) -> None:
    if module in FOREIGN_EXCEPTIONS_ALLOWED:
        return
    for node in ast.walk(ast.parse(MUXTUNNEL_MODULES[module].read_text())):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            names = {getattr(item, "id", getattr(item, "attr", "")) for item in caught}
            assert not names & _FOREIGN, f"{module}:{node.lineno} catches {names & _FOREIGN}"


#: Lines a module may have; one that needs more says why in its docstring (and is listed).
MAX_MODULE_LINES = 400


@pytest.mark.parametrize("module", sorted(MUXTUNNEL_MODULES))
def test_muxtunnel_modules_stay_small(module: str) -> None:
    lines = MUXTUNNEL_MODULES[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


#: What the composition root imports only once the process needs it: a server never loads the
#: client's code, and prometheus_client waits for a metrics or admin endpoint (idle memory).
ON_DEMAND = ("muxtunnel.server", "muxtunnel.client", "muxtunnel.web")


def test_the_composition_root_imports_sides_and_endpoints_on_demand() -> None:
    edges = import_edges("muxtunnel.app", MUXTUNNEL_MODULES["muxtunnel.app"], MUXTUNNEL_MODULES)
    assert {rank_key(target) for target, _ in edges} >= {"server", "client", "web"}
    for target, top_level in edges:
        on_demand = any(target == name or target.startswith(name + ".") for name in ON_DEMAND)
        assert not (on_demand and top_level), f"muxtunnel.app imports {target} at load"


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
    "_replay": 2,
    "_connection": 3,  # the sans-IO core
    "_carrier": 4,
    "_stream": 4,
    "_resumable": 5,  # what a resumable Session does more
    "aio": 6,  # Session: the adapter
    "_echo": 7,
    "__init__": 8,  # the public surface
    "__main__": 9,
    "testing.frames": 6,  # test helpers: not in the wheel
    "testing.pairs": 8,
    "testing.peers": 8,
    "testing.__init__": 9,
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
