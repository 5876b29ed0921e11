"""Finding 8: streams a client opens itself cost it, not its neighbours.

Only the server opens streams after the control channel; the old server accepted every stream
a client opened and reset it, which cost the server a task, an ACK and an RST each, counted
nowhere: 12 600 in 0.6 s from one connection raised an honest session's echo p50 from 0.9 to
11-17 ms. Now the mux core refuses them at once (`Session.refuse_streams`), each charged to the
client's reset budget (1000, then 33/s): a client that keeps opening streams is sent
GoAway(protocol error) and loses its session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from e2e.harness import Harness, free_port

from .isolation import neighbours, quiet_window, shared_fate, status

pytestmark = pytest.mark.stress


def test_f8_a_client_opening_streams_loses_its_session(harness: Harness, figures) -> None:
    """An authenticated client opens streams as fast as it can for 3 s: the server refuses
    each, ends the client's session once its reset budget is spent (after about 1000), counts
    them, and the neighbour's round trips stay fast."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        with tunnel.probe("b", fresh=False) as probe:
            probe.wait_samples(10)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                flood = subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).with_name("stream_flood.py")),
                        tunnel.listen.host,
                        str(tunnel.listen.port),
                        "flooder",
                        harness.token,
                        "3",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            refusals = status(admin).get("refusals", {})
            ended = [
                event.get("reason", "")
                for event in tunnel.listen.events("session closed")
                if str(event.get("peer", "")).startswith("127.0.0.8:")
            ]
        words = flood.stdout.split()
        assert words[:1] == ["opened"], (flood.stdout, flood.stderr[-2000:])
        opened, reason = int(words[1]), " ".join(words[3:])
        figures.record(
            "isolation 8: a client opening streams of its own",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            opened=opened,
            refused=refusals.get("client_streams", 0),
            reason=reason[:40],
        )
        honest.assert_shared_fate(quiet=quiet)
        # GoAway(1) once its reset budget (1000 at once) is spent.
        assert ended and "reset rate limit" in ended[0], (ended, reason)
        assert opened < 2000, opened
        assert refusals.get("client_streams", 0) >= 1000, refusals
