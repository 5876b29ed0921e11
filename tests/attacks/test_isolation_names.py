"""Finding 11: names registered and dropped in a loop cost bounded memory.

Per service name the server keeps traffic totals and a limiter (and the metrics endpoint four
series), so that a client that reconnects finds its totals. The old server never forgot a name:
about 290 B and four series each, for ever. Now a name no longer registered is forgotten after
`RETIRED_NAME_GRACE_S`, and at most `MAX_RETIRED_NAMES` such names are kept in any case.
"""

from __future__ import annotations

import contextlib
import urllib.request

import anyio
import pytest
from e2e.harness import Harness, free_port
from ops.helpers import running_server, server_config
from stress.live import AuthClient

from muxtunnel.model import PortRanges, ServicePolicy
from muxtunnel.server import _server
from muxtunnel.web.metrics import StatusCollector, render

from .isolation import neighbours, quiet_window, shared_fate

pytestmark = pytest.mark.stress

#: More names than the server keeps for retired names (MAX_RETIRED_NAMES).
CHURNED = 1200


def series_names(body: bytes) -> set[str]:
    """The service names the metrics text has series for."""
    names = set()
    for line in body.decode().splitlines():
        if line.startswith("muxtunnel_service_bytes_total{"):
            names.add(line.split('service="', 1)[1].split('"', 1)[0])
    return names


@pytest.mark.anyio
async def test_f11_name_churn_keeps_a_bounded_number_of_names(
    monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    """60 names, each registered, visited once and unregistered, with at most 20 retired
    names kept: the server ends with the 20 most recent (and a policy's limiter, which the
    config keeps), and the metrics have series for those only. A name registered again within
    the grace finds its totals."""
    monkeypatch.setattr(_server, "MAX_RETIRED_NAMES", 20, raising=False)
    config = server_config(
        allow_ports=PortRanges(((20000, 32767),)), services=(ServicePolicy("n0"),)
    )
    async with running_server(config) as server:
        assert server.port is not None
        address = ("127.0.0.1", server.port)
        with anyio.fail_after(60):
            async with AuthClient(address, source="127.0.0.1") as client:
                for n in range(60):
                    name = f"n{n}"
                    port = await client.register(name, config.token.value)  # type: ignore[union-attr]
                    async with await anyio.connect_tcp("127.0.0.1", port) as visitor:
                        await visitor.send(b"x" * (n + 1))
                        while name not in server.traffic or not server.traffic[name].bytes_in:
                            await anyio.sleep(0.005)
                    await client.unregister(name)
                    while name in server.registry.by_name:
                        await anyio.sleep(0.005)
                kept = set(server.traffic)
                again = await client.register("n59", config.token.value)  # type: ignore[union-attr]
                assert again
                totals_again = server.traffic["n59"].bytes_in
                series = series_names(render(StatusCollector(server.status)))
    figures.record("isolation 11: 60 names churned, 20 kept", names_kept=len(kept))
    assert kept == {f"n{n}" for n in range(40, 60)}, sorted(kept)
    assert set(server.limiters) <= {"n0", *kept, "n59"}, sorted(server.limiters)
    assert "n0" in server.limiters  # configured: kept whatever happens to its traffic
    assert series == kept, sorted(series)
    assert totals_again == 60


@pytest.mark.slow
def test_f11_name_churn_against_a_live_listen(harness: Harness, figures) -> None:
    """1200 names through a real `listen` (register, one visitor, unregister): its metrics keep
    series for at most `MAX_RETIRED_NAMES` (1024) of them, and the neighbour is served."""
    metrics = free_port()
    with neighbours(harness, listen_args=("--metrics", f"127.0.0.1:{metrics}")) as tunnel:
        address = (tunnel.listen.host, tunnel.listen.port)

        async def churn() -> None:
            async with AuthClient(address, source="127.0.0.9") as client:
                session = client.session
                assert session is not None

                async def take_visitors() -> None:  # so that each one's forward starts
                    with contextlib.suppress(anyio.BrokenResourceError):
                        while True:
                            (await session.accept_stream()).reset()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(take_visitors)
                    for n in range(CHURNED):
                        port = await client.register(f"churn-{n}", harness.token)
                        with contextlib.suppress(OSError):
                            async with await anyio.connect_tcp("127.0.0.1", port) as visitor:
                                await visitor.send(b"x")
                                with contextlib.suppress(anyio.BrokenResourceError):
                                    await visitor.receive()  # the reset: it was forwarded
                        await client.unregister(f"churn-{n}")
                    tg.cancel_scope.cancel()

        with tunnel.probe("b") as probe:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                with anyio.from_thread.start_blocking_portal() as portal:
                    portal.call(churn)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
                series = {name for name in series_names(r.read()) if name.startswith("churn-")}
        figures.record(
            "isolation 11: 1200 names through a live listen",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            names_in_metrics=len(series),
        )
        honest.assert_shared_fate(quiet=quiet)
        assert len(series) <= 1024, len(series)
