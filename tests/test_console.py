"""The live panel's layout: within the terminal, the public address whole, rates unwrapped."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from muxtunnel.console import Panel
from muxtunnel.status import ClientStatus, PathRow, ServerRow, ServiceRow

pytestmark = pytest.mark.anyio  # the panel reads the event loop's clock for its rates

LONG_PUBLIC = "tunnel.a-rather-long-domain.example.com:65535"


def _lines(status: ClientStatus, width: int, height: int) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None)
    console.print(Panel().render(status, width, height))
    return out.getvalue().rstrip("\n").split("\n")


def _status(count: int) -> ClientStatus:
    rows = tuple(
        ServiceRow(f"service-with-a-long-name-{i}", "tcp", LONG_PUBLIC, 3, 9,
                   bytes_in=10**9, bytes_out=10**9, local="[::1]:3000")
        for i in range(count)
    )  # fmt: skip
    return ClientStatus("1", "tunnel.a-rather-long-domain.example.com:7835", 2, services=rows)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 10), (120, 40), (60, 24)])
async def test_the_panel_fits_the_terminal(width: int, height: int) -> None:
    status = _status(50)
    lines = _lines(status, width, height)
    assert len(lines) < height, "\n".join(lines)  # the cursor's line never scrolls it
    assert all(len(line) <= width for line in lines)
    shown = [line for line in lines if LONG_PUBLIC in line]  # whole, on every row shown
    assert len(shown) == height - 4, "\n".join(lines)  # header, table head, "more", spare
    assert f"{50 - len(shown)} more" in lines[-1], "\n".join(lines)


async def test_at_80_columns_the_address_is_whole_and_rates_do_not_wrap() -> None:
    lines = _lines(_status(3), 80, 24)
    rows = [line for line in lines if LONG_PUBLIC in line]
    assert len(rows) == 3, "\n".join(lines)
    for row in rows:
        assert row.count("/s") == 2, row  # both rates, on the row's one line
    assert not any(line.strip().endswith(("KiB", "B/", "/")) for line in lines), lines


@pytest.mark.parametrize(("width", "height"), [(80, 24), (60, 10)])
async def test_paths_get_a_line_and_the_panel_still_fits(width: int, height: int) -> None:
    """With `client.paths` the panel says which path the session runs on, in one line."""
    paths = (
        PathRow("wifi", "192.168.1.23 -> t:7835", "active", 0.0031),
        PathRow("lte", "wwan0 -> t:7835", "standby", 0.041, loss=0.25),
    )
    status = dataclasses.replace(_status(50), servers=(ServerRow("t:7835", True, paths=paths),))
    lines = _lines(status, width, height)
    assert len(lines) < height and all(len(line) <= width for line in lines), lines
    line = next(line for line in lines if line.startswith("paths"))
    assert "*wifi active 3.1 ms" in line, line
    if width >= 80:  # a narrower terminal cuts the line short, with an ellipsis
        assert "lte standby 41.0 ms loss 25%" in line, line
    assert len([line for line in lines if LONG_PUBLIC in line]) == height - 5
