"""Finding 10: an attacker cannot write the server's log at will.

Every refusal on a path a peer drives is counted (`muxtunnel_refusals_total{reason}`) and logged
at counts 1, 2, 4, 8, ...: 600 failed authentications from one address, or 2000 refused
registrations on one session, make a dozen lines each, not 600 and 2000.
"""

from __future__ import annotations

import anyio
import pytest
from e2e.harness import Harness, free_port
from stress.live import AuthClient, Refused, log_lines

from .isolation import neighbours, quiet_window, shared_fate, status

pytestmark = pytest.mark.stress

FAILED_LOGINS = 600
REFUSED_REGISTRATIONS = 2000


def warnings(lines: list[dict[str, object]]) -> int:
    return sum(1 for line in lines if line.get("level") in ("warning", "error"))


def test_f10_failed_logins_and_refused_registrations_log_at_doubling_counts(
    harness: Harness, figures
) -> None:
    """600 connections from one address authenticate with a wrong token (5 fail, the rest are
    rate limited), then one session asks 2000 times for a port outside `allow_ports`: the
    server's log grows by a few dozen warnings, the refusals are all counted, and the
    neighbour is served throughout."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        address = (tunnel.listen.host, tunnel.listen.port)

        async def attack() -> tuple[int, int]:
            failed = 0
            for _ in range(FAILED_LOGINS):
                async with AuthClient(address, source="127.0.0.6") as client:
                    try:
                        await client.register("a", "not-the-token")
                    except Refused:
                        failed += 1
            refused = 0
            async with AuthClient(address, source="127.0.0.7") as client:
                await client.register("mine", harness.token)
                for _ in range(REFUSED_REGISTRATIONS):
                    try:
                        await client.register("other", harness.token, port=80)
                    except Refused:
                        refused += 1
            return failed, refused

        with tunnel.probe("b") as probe:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            before = len(tunnel.listen.events())
            lines_before = log_lines(tunnel.listen)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                with anyio.from_thread.start_blocking_portal() as portal:
                    failed, refused = portal.call(attack)
            new = tunnel.listen.events()[before:]
            refusals = status(admin).get("refusals", {})
        figures.record(
            "isolation 10: 600 failed logins, 2000 refused registrations",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            log_lines=log_lines(tunnel.listen) - lines_before,
            warnings=warnings(new),
        )
        honest.assert_shared_fate(quiet=quiet)
        assert failed == FAILED_LOGINS and refused == REFUSED_REGISTRATIONS
        # Doubling counts: about log2(n) lines per reason; the rest of the log is one
        # "session opened"/"session closed" pair per authenticated session (one here).
        assert warnings(new) <= 40, warnings(new)
        assert refusals.get("auth_failed", 0) + refusals.get("auth_rate_limited", 0) == 600
        assert refusals.get("register_port_not_allowed") == REFUSED_REGISTRATIONS, refusals
