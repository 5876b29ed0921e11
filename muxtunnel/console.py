"""The live panel `muxtunnel up` shows on a terminal: server, RTT, services, traffic.

Fed by the client's status callable, like the admin API: it never sees a live object. `rich`
is imported here (and in `statusview`) only, and this module only when a terminal shows it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from muxtunnel.status import ClientStatus

__all__ = ["REFRESH_S", "Panel", "human_rate", "show"]

#: How often the panel is drawn anew (rates are averaged over this).
REFRESH_S = 0.5


def human_rate(bytes_per_s: float) -> str:
    """A rate in B/s, KiB/s, MiB/s or GiB/s."""
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if bytes_per_s < 1024 or unit == "GiB/s":
            return f"{bytes_per_s:.0f} {unit}" if unit == "B/s" else f"{bytes_per_s:.1f} {unit}"
        bytes_per_s /= 1024
    raise AssertionError("unreachable")


class Panel:
    """Renders client snapshots; keeps the previous byte counts to show rates."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int, float]] = {}

    def render(self, status: ClientStatus) -> Group:
        """The panel for one snapshot."""
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
        )
        table = Table(expand=True)
        for column in ("service", "type", "public address", "local", "conns", "in/s", "out/s"):
            table.add_column(column)
        now = anyio.current_time()
        for row in status.services:  # live: counts bytes of open connections too
            last_in, last_out, last_t = self._last.get(row.name, (row.bytes_in, row.bytes_out, now))
            span = max(now - last_t, 1e-3)
            self._last[row.name] = (row.bytes_in, row.bytes_out, now)
            cells = (
                row.name,
                row.type,
                row.public or "-",
                row.local or "-",
                str(row.connections),
                human_rate((row.bytes_in - last_in) / span),
                human_rate((row.bytes_out - last_out) / span),
            )
            # Text, never markup: the public address is what the server answered.
            table.add_row(*(Text(cell) for cell in cells))
        return Group(header, table)


async def show(status: Callable[[], ClientStatus]) -> None:
    """Show the live panel on stderr's terminal until cancelled (then it clears away)."""
    panel = Panel()
    with Live(
        panel.render(status()), console=Console(stderr=True), refresh_per_second=4, transient=True
    ) as live:
        while True:
            await anyio.sleep(REFRESH_S)
            live.update(panel.render(status()))
