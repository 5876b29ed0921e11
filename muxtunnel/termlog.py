"""What only a terminal's log lines need: rich tracebacks, imported when a terminal is there."""

from __future__ import annotations

from typing import TextIO

from structlog.typing import ExcInfo

__all__ = ["rich_traceback"]


def rich_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    """Render an exception with rich, without local variables (a local may hold a token)."""
    from rich.console import Console
    from rich.traceback import Traceback

    sio.write("\n")
    console = Console(file=sio, color_system="truecolor")
    console.print(Traceback.from_exception(*exc_info, show_locals=False))
