"""muxtunnel: a reverse tunnel for TCP and UDP over one multiplexed connection."""

import sys

__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """Import structlog first with rich hidden from it.

    `import structlog` loads `structlog.dev`, which imports rich whenever it is installed (for
    tracebacks on a terminal): 4 MiB of every process's memory, for a renderer that only a
    terminal uses. `muxtunnel.termlog` brings rich in itself when a terminal wants it. Done
    here because every module of the package (and so the first `import structlog`) comes after
    this one.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()
