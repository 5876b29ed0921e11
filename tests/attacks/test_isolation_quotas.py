"""Findings 2, 3 and 5: what one service's visitors, or one client, may take of what is shared.

- 2: UDP source ports each cost a stream of the client's session; they must not take the
  streams the same client's TCP service needs (each service has a guaranteed share).
- 3: idle visitors of one service must not starve another service of the same client: at most
  `max_visitors_per_source` from one address, the stream share again for many addresses, and
  an idle timeout for visitors that never send.
- 5: a client's own caps: services per session, sessions per address.

Every test keeps a neighbour probing service `b` with fresh connections (a new visitor each
round trip), which is what starvation shows in: old connections keep their streams.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import pytest
from e2e.harness import Harness, free_port
from stress.live import AuthClient, Refused

from .isolation import (
    Address,
    Holder,
    echo_seconds,
    holder,
    neighbours,
    quiet_window,
    shared_fate,
    status,
    udp_echoes,
)

pytestmark = pytest.mark.stress

SOURCES = 1100


def keep_flooding(attacker: Holder, address: Address, seconds: float, per_source: int) -> int:
    """More idle connections every 50 ms for `seconds` (each grabs whatever was freed), from
    the flood's addresses: how many connected."""
    connected = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connected += attacker.open(address, 10, per_source=per_source, first=10)
        time.sleep(0.05)
    return connected


def test_f2_udp_source_ports_do_not_take_the_tcp_services_streams(
    harness: Harness, figures
) -> None:
    """One 1-byte datagram from each of 1100 source ports on the UDP service `u` of a client
    whose session holds 1024 streams: the flows stop at `u`'s share (its oldest make room for
    new ones), the same client's TCP service `b` keeps answering new visitors, a new honest UDP
    flow is answered, and the refusals are counted (a few log lines, not 1100)."""
    admin = free_port()
    with neighbours(harness, udp=True, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        with tunnel.probe("b") as probe, holder() as attacker:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                sent = attacker.udp(tunnel.public("u"), SOURCES)
                time.sleep(1.0)  # the neighbour keeps probing with the flows in place
                legit = udp_echoes(tunnel.public("u"), 5)
            refusals = status(admin).get("refusals", {})
            evicted_lines = tunnel.listen.events("udp flow evicted to make room for a new one")
        figures.record(
            "isolation 2: 1100 UDP source ports, TCP neighbour",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            datagrams=sent,
            legit_udp=f"{legit}/5",
            evicted=refusals.get("udp_flow_evicted", 0),
            log_lines=len(evicted_lines),
        )
        assert sent >= 1000
        honest.assert_shared_fate(quiet=quiet)
        assert legit == 5, f"a new honest UDP flow got {legit} of 5 answers"
        assert refusals.get("udp_flow_evicted", 0) > 0, refusals
        assert len(evicted_lines) <= refusals["udp_flow_evicted"].bit_length()


def idle_flood(
    harness: Harness, figures: Any, label: str, per_source: int, reason: str
) -> tuple[int, int, int]:
    """1100 idle connections to `a`, `per_source` from each address, and more every 50 ms
    (each grabbing whatever stream was freed), with the neighbour probing `b`: (connected,
    held by `a`, refused for `reason`). The neighbour's bar is asserted here."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        with tunnel.probe("b") as probe, holder() as attacker:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                connected = attacker.open(tunnel.public("a"), SOURCES, per_source=per_source)
                connected += keep_flooding(attacker, tunnel.public("a"), 1.5, per_source)
                document = status(admin)
        held = next(s["connections"] for s in document["services"] if s["name"] == "a")
        refused = document.get("refusals", {}).get(reason, 0)
        figures.record(
            label,
            **shared_fate(honest, listen_meter, up_meter, quiet),
            connected=connected,
            held=held,
            refused=refused,
        )
        honest.assert_shared_fate(quiet=quiet)
    return connected, held, refused


def test_f3_idle_visitors_from_one_address_do_not_starve_the_neighbour(
    harness: Harness, figures
) -> None:
    """1100 idle connections from one address to service `a`: at most
    `max_visitors_per_source` (256) are let in, the rest refused at once and counted; service
    `b` of the same client keeps answering new visitors."""
    label = "isolation 3: 1100 idle visitors from one address"
    connected, held, refused = idle_flood(harness, figures, label, SOURCES, "visitors_per_source")
    assert held <= 256, held
    assert refused >= connected - 256


def test_f3_idle_visitors_from_many_addresses_leave_the_neighbour_its_share(
    harness: Harness, figures
) -> None:
    """1100 idle connections to `a` from 11 addresses (under the per-address cap): `a` stops at
    its share of the session's 1023 visitor streams, and `b` keeps answering new visitors."""
    label = "isolation 3: 1100 idle visitors from 11 addresses"
    connected, held, refused = idle_flood(harness, figures, label, 100, "stream_quota")
    # Two services share 1023 streams: each is guaranteed 255, and may borrow the half
    # nobody is guaranteed: `a` stops at 1023 - 255.
    assert held <= 1023 - 255, held
    assert refused >= connected - held


def test_f3_idle_timeout_closes_silent_visitors_unless_the_service_opts_out(
    harness: Harness, figures
) -> None:
    """With `visitor_idle_timeout_s: 1`, visitors of `a` that never send are closed after
    about a second, and counted; a visitor that keeps talking stays. A service whose policy
    says `idle_timeout_s: 0` (long-lived connections) keeps its silent visitors."""
    server_yaml = (
        "  visitor_idle_timeout_s: 1\n"
        "  services:\n"
        f"    - name: b\n      idle_timeout_s: 0\n      token: {harness.token}\n"
    )
    admin = free_port()
    with neighbours(
        harness, server_yaml=server_yaml, listen_args=("--admin", f"127.0.0.1:{admin}")
    ) as tunnel:
        with holder() as silent_a, holder() as silent_b:
            silent_a.open(tunnel.public("a"), 20, per_source=20)
            silent_b.open(tunnel.public("b"), 20, per_source=20)
            talker_started = time.monotonic()
            with tunnel.probe("a", fresh=False, interval_s=0.2) as talker:
                time.sleep(3.0)
                talked = talker.since(talker_started)
            document = status(admin)
        open_now = {s["name"]: s["connections"] for s in document["services"]}
        figures.record(
            "isolation 3: idle timeout 1 s",
            **talked.figures(),
            a_open_after_3s=open_now["a"],
            b_open_after_3s=open_now["b"],
            closed_idle=document["refusals"].get("visitor_idle", 0),
        )
        assert document["refusals"].get("visitor_idle", 0) >= 20
        assert open_now["a"] <= 1, open_now  # the talker only
        assert open_now["b"] >= 20, open_now  # its policy says never
        assert not talked.errors, talked.errors[:3]


def test_f5_a_client_has_caps_on_services_and_sessions(harness: Harness, figures) -> None:
    """One token holder tries 100 registrations on one session and 30 sessions from one
    address: at most `max_services_per_session` (64) and `max_sessions_per_source` (16) are
    accepted, the rest refused with `limit_reached`; the neighbour's service is unaffected."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        control_address = (tunnel.listen.host, tunnel.listen.port)

        async def attack() -> tuple[int, int, list[str]]:
            codes: list[str] = []
            registered = 0
            async with AuthClient(control_address) as client:
                for n in range(100):
                    try:
                        await client.register(f"grab-{n}", harness.token)
                        registered += 1
                    except Refused as exc:
                        codes.append(exc.code)
            sessions = 0
            async with contextlib.AsyncExitStack() as stack:  # all 30 open at once
                for n in range(30):
                    client = AuthClient(control_address, source="127.0.0.3")
                    await stack.enter_async_context(client)
                    try:
                        await client.register(f"s-{n}", harness.token)
                        sessions += 1
                    except Refused as exc:
                        codes.append(exc.code)
            return registered, sessions, codes

        with tunnel.probe("b") as probe:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                with anyio.from_thread.start_blocking_portal() as portal:
                    registered, sessions, codes = portal.call(attack)
            refusals = status(admin).get("refusals", {})
        figures.record(
            "isolation 5: 100 services on one session, 30 sessions from one address",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            services=registered,
            sessions=sessions,
        )
        honest.assert_shared_fate(quiet=quiet)
        assert registered == 64, (registered, codes[:3])
        assert sessions == 16, (sessions, codes[-3:])
        assert set(codes) == {"limit_reached"}, set(codes)
        assert refusals.get("register_limit_reached") == 36, refusals
        assert refusals.get("sessions_per_source") == 14, refusals
        assert echo_seconds(tunnel.public("b")) < 2.0
