"""`Session`s over loopback TCP: throughput on 1 and 8 streams, and the latency of a small echo
stream sharing the session with a bulk one. Figures are printed at the end of the run."""

from __future__ import annotations

import statistics

import anyio
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro.session_throughput import echo_latency_ms, percentile, throughput_mb_s

TOTAL = 32 << 20


@pytest.mark.parametrize("streams", [1, 8])
def test_session_throughput(benchmark: BenchmarkFixture, figures: list[str], streams: int) -> None:
    rates: list[float] = []

    def run() -> None:
        rates.append(anyio.run(throughput_mb_s, streams, TOTAL))

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["MB/s"] = rates
    figures.append(
        f"session over TCP, {streams} stream(s), {TOTAL >> 20} MiB: "
        f"{statistics.median(rates):.1f} MB/s (median of {len(rates)})"
    )


@pytest.mark.parametrize("bulk", [False, True], ids=["idle", "beside-bulk"])
def test_echo_latency(benchmark: BenchmarkFixture, figures: list[str], bulk: bool) -> None:
    times: list[float] = []

    def run() -> None:
        times.extend(anyio.run(echo_latency_ms, 300, bulk))

    benchmark.pedantic(run, rounds=1, iterations=1)
    p50, p99 = statistics.median(times), percentile(times, 0.99)
    benchmark.extra_info.update(p50_ms=p50, p99_ms=p99)
    label = "beside a bulk stream" if bulk else "on an idle session "
    figures.append(f"64 B echo {label}: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({len(times)} rounds)")
