"""A session whose start is cancelled (its caller's scope ends, a server shuts down) leaves
nothing behind: no task group half entered (anyio then fails the caller's next scope exit with
"Attempted to exit a cancel scope that isn't the current task's current cancel scope"), and
its carrier closed."""

from __future__ import annotations

import anyio
import pytest

from mux import MuxConfig, Session
from mux.testing import tcp_stream_pair

pytestmark = pytest.mark.anyio


async def test_a_cancelled_start_leaves_the_caller_s_scopes_intact() -> None:
    async with tcp_stream_pair() as (left, right):
        with anyio.CancelScope() as outer:
            with anyio.CancelScope() as inner:
                inner.cancel()
                async with Session(left, client=True, config=MuxConfig()):
                    pytest.fail("the session started inside a cancelled scope")
            assert inner.cancelled_caught
        assert not outer.cancelled_caught
        with anyio.fail_after(5):  # the carrier was closed: the peer sees its end
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await right.receive()
