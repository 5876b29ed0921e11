"""Findings 6 and 7: who owns a public port, and a refusal that used to crash the server.

- 6: a port belongs to the service (name and token) that held it. While its client reconnects
  (`port_reservation_s`) nobody else may bind it, whatever token they hold; the config may pin
  a port to a service (`services[].port`); a port the server picks is never a reserved or
  pinned one.
- 7: a refusal quoting a 200-entry `allow_ports` (over 1024 characters) made `Error()` raise
  and `listen` exit: at registration, and on a reload that narrows the list under a live
  service. The message is now shortened; `listen` lives.
"""

from __future__ import annotations

import secrets
import signal

import anyio
import pytest
from e2e.harness import Harness, TcpEchoServer, free_port
from stress.live import AuthClient, Refused

from .isolation import echo_seconds, neighbours, quiet_window, shared_fate, status

pytestmark = pytest.mark.stress


def _portal_call(func, *args):  # type: ignore[no-untyped-def]
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(func, *args)


async def _register(address: tuple[str, int], source: str, name: str, token: str, port: int
                    ) -> int | str:  # fmt: skip
    """Register and hold for a moment: the public port, or the refusal's code."""
    async with AuthClient(address, source=source) as client:
        try:
            return await client.register(name, token, port=port)
        except Refused as exc:
            return exc.code


def test_f6_a_reconnecting_owner_keeps_its_port(harness: Harness, figures) -> None:
    """The owner of service `owner` (its own token) loses its carrier (`up` killed). During the
    reservation (`port_reservation_s`, 60 s by default) another token holder asks for the same
    port under another name and is refused (the old server gave it away, and the next
    visitor's bytes went to the squatter); a port the server picks for him is not that one
    either. The owner's next `up` gets the port back and its visitors reach it."""
    owner_token = secrets.token_hex(16)
    owner_port, spare_port = free_port(), free_port()
    server_yaml = f"  services:\n    - name: owner\n      token: {owner_token}\n"
    ports = {"a": free_port(), "b": free_port(), "u": free_port()}
    allow = ",".join(str(p) for p in (ports["a"], ports["b"], owner_port, spare_port))
    owner_echo = TcpEchoServer()
    with (
        neighbours(harness, server_yaml=server_yaml, ports=ports, allow_ports=allow) as tunnel,
        tunnel.probe("b") as probe,
    ):
        address = (tunnel.listen.host, tunnel.listen.port)
        spec = f"owner={owner_echo.port}:{owner_port}"
        try:
            owner = harness.up(tunnel.listen, tcp=[spec], token=owner_token)
            assert echo_seconds(("127.0.0.1", owner_port)) < 5
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                owner.kill()  # its carrier is gone: the server ends the session
                tunnel.listen.wait_event("session closed")
                squat = _portal_call(
                    _register, address, "127.0.0.4", "squat", harness.token, owner_port
                )
                picked = _portal_call(_register, address, "127.0.0.4", "squat", harness.token, 0)
                back = harness.up(tunnel.listen, tcp=[spec], token=owner_token)
                served = echo_seconds(("127.0.0.1", owner_port))
        finally:
            owner_echo.close()
        figures.record(
            "isolation 6: port squatting during the owner's reconnect",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            squatter=squat,
            picked=picked,
        )
        honest.assert_shared_fate(quiet=quiet)
        assert squat == "port_in_use", squat
        assert picked == spare_port, (picked, spare_port, owner_port)
        assert back.services()["owner"].port == owner_port
        assert served < 5


def test_f6_a_pinned_port_goes_to_its_service_only(harness: Harness) -> None:
    """`services[].port` pins a port to a service: another name asking for it is refused, the
    service gets it when it lets the server pick, and a pick for another service never lands
    on it (the pin needs no place in `allow_ports`)."""
    pinned_port, other_port = free_port(), free_port()
    server_yaml = (
        "  services:\n"
        f"    - name: pinned\n      port: {pinned_port}\n      token: {harness.token}\n"
    )
    ports = {"a": free_port(), "b": free_port(), "u": free_port()}
    allow = ",".join(str(p) for p in (ports["a"], ports["b"], other_port))
    admin = free_port()
    with neighbours(
        harness,
        server_yaml=server_yaml,
        ports=ports,
        allow_ports=allow,
        listen_args=("--admin", f"127.0.0.1:{admin}"),
    ) as tunnel:
        address = (tunnel.listen.host, tunnel.listen.port)
        taken = _portal_call(_register, address, "127.0.0.5", "other", harness.token, pinned_port)
        picked = _portal_call(_register, address, "127.0.0.5", "other", harness.token, 0)
        elsewhere = _portal_call(
            _register, address, "127.0.0.5", "pinned", harness.token, other_port
        )
        given = _portal_call(_register, address, "127.0.0.5", "pinned", harness.token, 0)
        refusals = status(admin).get("refusals", {})
    assert taken == "port_in_use", taken
    assert picked == other_port, picked
    assert elsewhere == "port_not_allowed", elsewhere
    assert given == pinned_port, given
    assert refusals.get("register_port_in_use") == 1, refusals


#: 200 allowed ports: a refusal quoting them is 1199 characters long.
LONG_ALLOW = ",".join(str(port) for port in range(40000, 40400, 2))


def test_f7_a_refusal_quoting_a_long_port_list_does_not_crash_listen(
    harness: Harness, figures
) -> None:
    """`allow_ports` of 200 entries: a registration for a port outside it is refused with a
    message that quotes the list (shortened to 1024 characters), and `listen` lives; then a
    SIGHUP that narrows the list under a live service closes that service, tells its client
    (the same long reason), and `listen` lives again. The neighbour answers throughout."""
    ports = {"a": free_port(), "b": free_port(), "u": free_port()}
    allow = f"{LONG_ALLOW},{ports['a']},{ports['b']}"
    with (
        neighbours(
            harness, server_yaml=f"  allow_ports: '{allow}'\n", ports=ports, allow_ports=""
        ) as tunnel,
        tunnel.probe("b") as probe,
    ):
        address = (tunnel.listen.host, tunnel.listen.port)
        probe.wait_samples(5)
        quiet = quiet_window(probe)
        listen_meter, up_meter = tunnel.meters()
        with listen_meter, up_meter, probe.window() as honest:
            refused = _portal_call(_register, address, "127.0.0.4", "x", harness.token, 40001)
            alive_after_refusal = tunnel.listen.running()
            narrowed = f"{LONG_ALLOW},{ports['b']}"  # `a`'s port is out
            harness.write("server.yaml", f"server:\n  allow_ports: '{narrowed}'\n")
            tunnel.listen.send_signal(signal.SIGHUP)
            tunnel.up.wait_event("service closed by the server", timeout_s=10)
            alive_after_reload = tunnel.listen.running()
        closed = tunnel.up.events("service closed by the server")
        figures.record(
            "isolation 7: refusals quoting a 200-entry allow_ports",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            refused=refused,
        )
        assert alive_after_refusal and alive_after_reload, tunnel.listen.describe()
        assert refused == "port_not_allowed", refused
        assert closed[0]["service"] == "a", closed
        reason = closed[0]["reason"]
        assert len(reason) <= 1024 and reason.endswith("..."), reason
        assert reason.startswith(f"port {ports['a']} is no longer allowed (allowed: ")
        honest.assert_shared_fate(quiet=quiet)
