"""Latency and jitter on the carrier, from the userspace delay proxy (no root needed).

The kernel here has no netem, so a long link is emulated in userspace: `bench/delayproxy.py`
sits between `up` and `listen` and delays every chunk (25 ms each way, +-10 ms of jitter that
never reorders bytes). Transfers must arrive intact without stalls, and keepalive must not
mistake a slow link for a dead one.
"""

from __future__ import annotations

import time

import pytest
from e2e.harness import Harness, TcpEchoServer, free_port
from stress.live import HonestProbe
from stress.visitors import EchoExact, summarize, wait_all

from bench.delayproxy import DelayProxy

pytestmark = pytest.mark.stress

MIB = 1 << 20
KEEPALIVE = "  mux:\n    keepalive_interval_s: 0.5\n    keepalive_timeout_s: 1.0\n"


def test_latency_and_jitter(harness: Harness, tcp_echo: TcpEchoServer, figures) -> None:
    """25 ms +- 10 ms each way on the carrier: two 4 MiB echoes are byte-exact with no stall
    over 10 s, small round trips take about the added 50 ms, and the session survives with a
    keepalive timeout (1 s) only 20 times the round trip."""
    server = harness.write("server.yaml", "server:\n" + KEEPALIVE)
    client = harness.write("client.yaml", "client:\n" + KEEPALIVE)
    listen = harness.listen("--config", server)
    with DelayProxy(
        ("127.0.0.1", 0), (listen.host, listen.port), latency_ms=25, jitter_ms=10
    ).running() as proxy:
        remote = free_port()
        up = harness.up(
            f"{proxy[0]}:{proxy[1]}", tcp=[f"echo={tcp_echo.port}:{remote}"], config=client
        )
        address = ("127.0.0.1", remote)
        with HonestProbe(address, interval_s=0.05) as probe:
            with probe.window(min_samples=10) as idle:  # the same path with nothing else on it
                probe.wait_samples(10)
            with probe.window() as rtt:
                visitors = [EchoExact(address, 4 * MIB, seed=i) for i in range(2)]
                started = time.monotonic()
                for visitor in visitors:
                    visitor.start()
                assert not wait_all(visitors, 60), summarize(visitors)
                seconds = time.monotonic() - started
        teardowns = up.events("session ended")  # before the proxy goes away with the block
    figures.record(
        "delay proxy: 25 +- 10 ms each way, 2 x 4 MiB echo",
        seconds=seconds,
        **rtt.figures(),
        max_stall_s=round(max(v.max_stall_s for v in visitors), 2),
        teardowns=len(teardowns),
    )
    assert summarize(visitors) == {"ok": 2}
    assert max(v.max_stall_s for v in visitors) < 10.0  # 200x the round trip: a real stall
    assert teardowns == []
    latency, idle_p50_ms = rtt.figures(), idle.figures()["honest_p50_ms"]
    # Never under the 50 ms added (less jitter); the transfers may at most quadruple what the
    # same path took idle just before (a loaded machine slows both alike).
    assert 40 <= latency["honest_p50_ms"] <= 4 * idle_p50_ms, (latency, idle_p50_ms)
