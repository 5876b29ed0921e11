"""Finding 4: compression memory is bounded per session, and the level is the server's to cap.

Every compressed visitor stream holds a zstd context each way: 0.8 MiB at level 3 and 10 MiB
at level 9 for a stream that carried one byte (`python -m bench.micro.compression --memory`).
The old server let a client ask for level 9 and gave every visitor its contexts: 150 one-byte
visitors took `listen` from 39 to 1550 MiB, `up` alike. Now the server caps the level
(`compression_level_max`, 3 by default, which `up` follows too) and charges each compressed
stream to its session's budget (`compression_budget_bytes`, 64 MiB, a guaranteed share per
service); beyond it, a visitor's stream goes uncompressed (the client is told in the stream's
header), which costs bandwidth, not memory.
"""

from __future__ import annotations

import time

import pytest
from e2e.harness import Harness, free_port

from .isolation import echo_seconds, holder, neighbours, quiet_window, shared_fate, status

pytestmark = pytest.mark.stress

VISITORS = 150


def test_f4_compressed_visitors_stay_within_the_session_budget(harness: Harness, figures) -> None:
    """`up --compress 9`, 150 visitors of `a` that each send one byte and stay: `listen` and
    `up` grow by tens of MiB, not by 1.5 GiB; the visitors beyond the budget are served
    uncompressed (and counted), a new visitor of `a` still gets its echo, and the neighbour
    `b` (compressed too) keeps answering."""
    admin = free_port()
    with neighbours(
        harness, up_args=("--compress", "9"), listen_args=("--admin", f"127.0.0.1:{admin}")
    ) as tunnel:
        with tunnel.probe("b") as probe, holder() as attacker:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                held = attacker.open(tunnel.public("a"), VISITORS, per_source=50, send=b"x")
                time.sleep(1.0)
                try:
                    late: float | None = echo_seconds(tunnel.public("a"))
                except OSError:
                    late = None
            refusals = status(admin).get("refusals", {})
        figures.record(
            "isolation 4: 150 one-byte visitors asking zstd level 9",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            rss_growth_mib=listen_meter.rss_growth_mib,
            up_rss_growth_mib=up_meter.rss_growth_mib,
            uncompressed=refusals.get("compression_fallback", 0),
        )
        honest.assert_shared_fate(quiet=quiet)
        assert held == VISITORS
        assert listen_meter.rss_growth_mib < 64, listen_meter.rss_growth_mib
        assert up_meter.rss_growth_mib < 64, up_meter.rss_growth_mib
        assert late is not None and late < 2.0, late
        # 64 MiB at 3.3 MiB a stream (level 3): 19 compressed streams at most, two services.
        assert refusals.get("compression_fallback", 0) >= VISITORS - 19, refusals
