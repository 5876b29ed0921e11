"""The live panel `muxtunnel up` shows on a terminal: server, RTT, services, traffic."""

from __future__ import annotations

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from muxtunnel.client import Client

REFRESH_S = 0.5


def human_rate(bytes_per_s: float) -> str:
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if bytes_per_s < 1024 or unit == "GiB/s":
            return f"{bytes_per_s:.0f} {unit}" if unit == "B/s" else f"{bytes_per_s:.1f} {unit}"
        bytes_per_s /= 1024
    raise AssertionError("unreachable")


class Panel:
    """Renders the client's state; keeps the previous byte counts to show rates."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._last: dict[str, tuple[int, int, float]] = {}

    def render(self) -> Group:
        client = self.client
        session = client.session
        if session is not None and not session.closed and client.connected.is_set():
            rtt = f"{session.rtt_s * 1000:.1f} ms" if session.rtt_s is not None else "-"
            status = Text(f"online  rtt {rtt}", style="bold green")
        else:
            status = Text("connecting…", style="bold yellow")
        header = Text.assemble(
            ("muxtunnel ", "bold"),
            f"server {client.server}  ",
            status,
            f"  reconnects {client.reconnects}",
        )
        table = Table(expand=True)
        for column in ("service", "type", "public address", "local", "conns", "in/s", "out/s"):
            table.add_column(column)
        now = anyio.current_time()
        for name, state in client.services.items():
            traffic = client.traffic_of(name)  # live: counts bytes of open connections too
            bytes_in = traffic.bytes_in + state.udp.bytes_in
            bytes_out = traffic.bytes_out + state.udp.bytes_out
            last_in, last_out, last_t = self._last.get(name, (bytes_in, bytes_out, now))
            span = max(now - last_t, 1e-3)
            self._last[name] = (bytes_in, bytes_out, now)
            conns = state.connections if state.spec.type == "tcp" else state.udp.flows_opened
            table.add_row(
                name,
                state.spec.type,
                state.public or "-",
                state.spec.local,
                str(conns),
                human_rate((bytes_in - last_in) / span),
                human_rate((bytes_out - last_out) / span),
            )
        return Group(header, table)


async def run_with_console(client: Client) -> None:
    """Run the client with the live panel on stderr's terminal."""
    panel = Panel(client)
    with Live(
        panel.render(), console=Console(stderr=True), refresh_per_second=4, transient=True
    ) as live:
        async with anyio.create_task_group() as tg:

            async def refresh() -> None:
                while True:
                    await anyio.sleep(REFRESH_S)
                    live.update(panel.render())

            tg.start_soon(refresh)
            try:
                await client.run()
            finally:
                tg.cancel_scope.cancel()
