"""The live panel `muxtunnel up` shows on a terminal: server, RTT, services, traffic.

Fed by the client's status callable, like the admin API: it never sees a live object. `rich`
is imported here (and in `statusview`) only, and this module only when a terminal shows it.

Invariants of the display (each one a way it used to break):

- Nothing but rich writes to the terminal while the panel shows: log lines and the services'
  public addresses are printed through the panel's console, above it (`Console.print` above a
  `Live` display is rich's supported way); a line written past rich would leave a stale copy of
  the panel behind at every refresh.
- The panel is never taller than the terminal (rich cannot move the cursor above the screen's
  top to redraw it): it shows as many service rows as fit and says how many it left out.
- The public address and both rates are never cut or wrapped: the other columns are shown as
  the width allows, the service name first (shortened if need be), then connections, then, from
  100 columns, type and local address (the address lines above the panel show those anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from muxtunnel.log import redirect
from muxtunnel.status import ClientStatus, PathRow

__all__ = ["REFRESH_S", "LiveConsole", "Panel", "human_rate", "show"]

#: How often the panel is drawn anew (rates are averaged over this).
REFRESH_S = 0.5
#: Lines of the panel that are not service rows: header, table head, a last line for "N more",
#: and one spare so that the cursor's line never scrolls the panel.
_CHROME_LINES = 4
#: Widths that hold any rate ("1023.9 KiB/s") and a connection count.
_RATE_CHARS = 12
_CONNS_CHARS = 5
#: Cells between two columns: a padding of one on each side (no box: no divider).
_GAP_CHARS = 2
#: From this many columns on, the type and local address columns are shown (if they fit).
_WIDE_COLUMNS = 100


def human_rate(bytes_per_s: float) -> str:
    """A rate in B/s, KiB/s, MiB/s or GiB/s."""
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if bytes_per_s < 1024 or unit == "GiB/s":
            return f"{bytes_per_s:.0f} {unit}" if unit == "B/s" else f"{bytes_per_s:.1f} {unit}"
        bytes_per_s /= 1024
    raise AssertionError("unreachable")


def _columns(width: int, public_chars: int) -> set[str]:
    """The columns that fit `width` besides the public address and the two rates, which are
    always shown whole: the service name first, then connections, then (wide) type and local."""
    used = public_chars + 2 * (_RATE_CHARS + _GAP_CHARS) + 1  # rich keeps one cell spare
    chosen = {"public"}
    for name, chars in (("service", 4), ("conns", _CONNS_CHARS)):
        if used + chars + _GAP_CHARS <= width:
            chosen.add(name)
            used += chars + _GAP_CHARS
    if width >= _WIDE_COLUMNS and used + 5 + 8 + 2 * _GAP_CHARS <= width:
        chosen |= {"type", "local"}  # "https", and a local address worth showing
    return chosen


class Panel:
    """Renders client snapshots; keeps the previous byte counts to show rates."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int, float]] = {}

    def render(self, status: ClientStatus, width: int = 80, height: int = 24) -> Group:
        """The panel for one snapshot, to fit `width` by `height` cells."""
        if status.connected:
            rtt = f"{status.rtt_s * 1000:.1f} ms" if status.rtt_s is not None else "-"
            state = Text(f"online  rtt {rtt}", style="bold green")
        else:
            state = Text("connecting…", style="bold yellow")
        header = Text.assemble(
            ("muxtunnel ", "bold"),
            f"server {status.server}  ",
            state,
            f"  reconnects {status.reconnects}",
            no_wrap=True,
            overflow="ellipsis",
        )
        longest = max((len(row.public or "-") for row in status.services), default=1)
        columns = _columns(width, max(longest, 14))
        table = Table(
            box=None, expand=True, pad_edge=False, padding=(0, 1), header_style="bold underline"
        )
        if "service" in columns:
            table.add_column("service", overflow="ellipsis", no_wrap=True, min_width=4, ratio=1)
        if "type" in columns:
            table.add_column("type", no_wrap=True)
        table.add_column("public address", no_wrap=True, min_width=max(longest, 14))
        if "local" in columns:
            table.add_column("local", overflow="ellipsis", no_wrap=True, ratio=1)
        if "conns" in columns:
            table.add_column("conns", justify="right", no_wrap=True, min_width=_CONNS_CHARS)
        for title in ("in/s", "out/s"):
            table.add_column(title, justify="right", no_wrap=True, min_width=_RATE_CHARS)
        now = anyio.current_time()
        rows = status.services
        paths = [path for server in status.servers for path in server.paths]
        shown = min(len(rows), max(1, height - _CHROME_LINES - bool(paths)))
        for index, row in enumerate(rows):  # every row's rate, shown or not: the next is right
            last_in, last_out, last_t = self._last.get(row.name, (row.bytes_in, row.bytes_out, now))
            span = max(now - last_t, 1e-3)
            self._last[row.name] = (row.bytes_in, row.bytes_out, now)
            if index >= shown:
                continue
            cell = {
                "service": row.name,
                "type": row.type,
                "public": row.public or "-",
                "local": row.local or "-",
                "conns": str(row.connections),
                "in": human_rate((row.bytes_in - last_in) / span),
                "out": human_rate((row.bytes_out - last_out) / span),
            }
            names = [n for n in ("service", "type", "public", "local", "conns") if n in columns]
            cells = [cell[name] for name in names] + [cell["in"], cell["out"]]
            # Text, never markup: the public address is what the server answered.
            table.add_row(*(Text(cell) for cell in cells))
        parts: list[Text | Table] = [header]
        if paths:  # `client.paths`: which one the session runs on, and how each one does
            parts.append(Text(_paths_line(paths), no_wrap=True, overflow="ellipsis"))
        parts.append(table)
        if shown < len(rows):
            parts.append(Text(f"… {len(rows) - shown} more (muxtunnel status shows all)"))
        return Group(*parts)


def _paths_line(paths: list[PathRow]) -> str:
    cells = []
    for path in paths:
        rtt = f"{path.rtt_s * 1000:.1f} ms" if path.rtt_s is not None else "-"
        loss = f" loss {path.loss * 100:.0f}%" if path.loss else ""
        mark = "*" if path.state == "active" else ""
        cells.append(f"{mark}{path.name} {path.state} {rtt}{loss}")
    return "paths  " + "  ".join(cells)


class LiveConsole:
    """The terminal while the panel shows: prints lines above the panel, redraws it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.live: Live | None = None

    def print_line(self, line: str) -> None:
        """Print one line (ANSI colours kept) above the panel."""
        text = Text.from_ansi(line.rstrip("\n"))
        self.console.print(text, soft_wrap=True, highlight=False)

    def _log_line(self, rendered: str) -> None:
        for line in rendered.rstrip("\n").split("\n"):
            self.print_line(line)

    @contextmanager
    def holding(self, first: Group) -> Iterator[Live]:
        """Show `first`, send log lines above it, and clear the panel away at the end."""
        with (
            Live(
                first,
                console=self.console,
                auto_refresh=False,
                transient=True,
                vertical_overflow="crop",
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
            redirect(self._log_line),
        ):
            self.live = live
            try:
                yield live
            finally:
                self.live = None


async def show(
    status: Callable[[], ClientStatus],
    terminal: LiveConsole | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Show the live panel on `terminal` (stderr's) until cancelled (then it clears away)."""
    panel = Panel()
    terminal = terminal if terminal is not None else LiveConsole()
    console = terminal.console

    def frame() -> Group:
        width, height = console.size
        return panel.render(status(), width, height)

    with terminal.holding(frame()) as live:
        task_status.started()
        while True:
            await anyio.sleep(REFRESH_S)
            live.update(frame(), refresh=True)
