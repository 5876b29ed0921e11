"""Finding 1: no accept loop dies of EMFILE/ENFILE/ENOBUFS.

A process out of file descriptors cannot accept: `accept()` fails with EMFILE until one is
freed. Each accept loop (control port, public TCP ports, admin API, metrics) must back off, log
at doubling counts, keep serving what it already holds, and accept again once fds are free.
The tests lower RLIMIT_NOFILE of the running process (`resource.prlimit`) and exhaust it with
idle visitors; the honest neighbour is a visitor connection that was open before (new ones
cannot be accepted by a process that has no fd left, whatever it does).
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from e2e.harness import Harness, free_port

from .isolation import holder, neighbours, quiet_window, served_within, shared_fate

pytestmark = pytest.mark.stress

#: The usual soft limit of open files, which 1100 idle visitors exceed.
NOFILE = 1024
ATTACKERS = 1100
#: Spread over sources (and a high service cap) so that no per-address or per-service limit
#: stops the flood before the fds run out: this test is about the accept loops alone.
SERVER_YAML = "  max_visitors_per_service: 4000\n  mux:\n    max_streams: 4096\n"


def _get(url: str, timeout_s: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        response.read()
        return int(response.status)


def scrape_later(url: str) -> tuple[threading.Thread, list[int | str]]:
    """A thread (not started) that GETs `url`, waiting up to 20 s (in a backlog while fds are
    out), and the list its status code or error lands in."""
    results: list[int | str] = []

    def scrape() -> None:
        try:
            results.append(_get(url, 20))
        except OSError as exc:
            results.append(repr(exc))

    return threading.Thread(target=scrape, daemon=True), results


def test_f1_listen_out_of_fds_keeps_serving_and_recovers(harness: Harness, figures) -> None:
    """`listen` limited to 1024 fds, 1100 idle visitors on service `a`: its public-port accept
    loop hits EMFILE, and so do the admin API's and the control port's when they are asked
    meanwhile. `listen` must stay up, the neighbour's open connection keep answering, the
    refusals be logged at doubling counts (a few lines, not one per failed accept), and once
    the flood ends a new visitor, a scrape and a new client are served again."""
    admin = free_port()
    with neighbours(
        harness,
        server_yaml=SERVER_YAML,
        listen_args=("--admin", f"127.0.0.1:{admin}"),
        listen_nofile=NOFILE,
    ) as tunnel:
        with tunnel.probe("b", fresh=False) as probe, holder() as attacker:
            probe.wait_samples(10)
            quiet = quiet_window(probe)
            scraper, scrapes = scrape_later(f"http://127.0.0.1:{admin}/api/v1/status")
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                connected = attacker.open(tunnel.public("a"), ATTACKERS, per_source=100)
                time.sleep(0.5)
                scraper.start()
                time.sleep(1.5)
                alive_during = tunnel.listen.running()
            attacker.close_all()
            recovered_s = served_within(tunnel.public("a"), 10.0)
            scraper.join(15)
            failed_accepts = tunnel.listen.events("accept failed; backing off")
        figures.record(
            "isolation 1: listen at 1024 fds, 1100 idle visitors",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            connected=connected,
            recovered_s=None if recovered_s is None else round(recovered_s, 2),
            accept_error_lines=len(failed_accepts),
            accept_errors=max((e["count"] for e in failed_accepts), default=0),
        )
        assert alive_during and tunnel.listen.running(), tunnel.listen.describe()
        assert connected >= 1000, f"only {connected} attackers connected"
        assert failed_accepts, "EMFILE was never reached: the test did not test anything"
        assert recovered_s is not None and recovered_s < 5.0, recovered_s
        assert scrapes == [200], scrapes
        # Doubling counts: one line at each power of two, not one per failed accept.
        assert len(failed_accepts) <= 1 + max(e["count"] for e in failed_accepts).bit_length()
        honest.assert_shared_fate(quiet=quiet)


def test_f1_up_metrics_out_of_fds_keeps_serving(harness: Harness, figures) -> None:
    """`up` limited to 128 fds with a metrics endpoint: 200 idle visitors take its fds (one
    connection to the local service each); a scrape meets EMFILE in the metrics accept loop.
    `up` must stay up and answer the scrape once the visitors are gone."""
    metrics = free_port()
    with neighbours(
        harness, up_args=("--metrics", f"127.0.0.1:{metrics}"), up_nofile=128
    ) as tunnel:
        with tunnel.probe("b", fresh=False) as probe, holder() as attacker:
            probe.wait_samples(10)
            quiet = quiet_window(probe)
            scraper, scrapes = scrape_later(f"http://127.0.0.1:{metrics}/metrics")
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                connected = attacker.open(tunnel.public("a"), 200, per_source=50)
                time.sleep(1.0)
                scraper.start()
                time.sleep(1.0)
                alive_during = tunnel.up.running()
            attacker.close_all()
            scraper.join(15)
        figures.record(
            "isolation 1: up at 128 fds, 200 idle visitors, metrics scraped",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            connected=connected,
        )
        assert alive_during and tunnel.up.running(), tunnel.up.describe()
        assert tunnel.up.events("accept failed; backing off"), "EMFILE was never reached"
        assert scrapes == [200], scrapes
        honest.assert_shared_fate(quiet=quiet)
