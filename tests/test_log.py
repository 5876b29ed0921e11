"""`muxtunnel.log`: what the hot paths ask of it."""

from __future__ import annotations

import io
import json

import anyio
import pytest

from muxtunnel.forward import forward
from muxtunnel.limits import ServiceTraffic
from muxtunnel.log import configure_logging, debug_enabled


def test_debug_enabled_follows_the_configured_level() -> None:
    try:
        configure_logging("json", "info", stream=io.StringIO())
        assert not debug_enabled()
        configure_logging("json", "debug", stream=io.StringIO())
        assert debug_enabled()
    finally:
        configure_logging("json", "info", stream=io.StringIO())


class _Ends(anyio.abc.ByteStream):
    """A stream that ends at once both ways."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_clean_visitor_logs_at_debug_only(level: str) -> None:
    out = io.StringIO()
    configure_logging("json", level, stream=out)
    try:
        anyio.run(
            lambda: forward(
                _Ends(), _Ends(), visitor_side=True, service="s", peer="p", traffic=ServiceTraffic()
            )
        )
    finally:
        configure_logging("json", "info", stream=io.StringIO())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [line["event"] for line in lines if "logger" not in line]  # asyncio's own lines
    assert events == ([] if level == "info" else ["visitor opened", "visitor closed"])
