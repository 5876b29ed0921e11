"""The sans-IO core alone, by frame size (a ladder after hashicorp/yamux's bench_test.go).

Receive path: `receive_data` over a stream of Data frames, with the consumer's reads returning
credit as it goes. Send path: `send_data` then `data_to_send`, the peer's window updates fed back
in. Each round moves `TOTAL` bytes of payload. Both paths hand out slices of the caller's
buffers (no copy), so large frames cost little more than small ones: the per-frame work is what
the ladder shows.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from mux import Connection, MuxConfig
from mux._const import INITIAL_STREAM_WINDOW
from mux.testing import FrameBuilder

F = FrameBuilder()
SIZES = [32, 256, 4096, 65536]
TOTAL = 4 << 20
HALF = INITIAL_STREAM_WINDOW // 2


def run_receive(slices: list[bytes], payload_per_slice: int) -> None:
    conn = Connection(client=True)
    conn.receive_data(F.syn(2), 0.0)
    conn.accept_stream(2)
    conn.data_to_send()
    for wire in slices:
        conn.receive_data(wire, 0.0)
        conn.stream_read(2, payload_per_slice, 0.0)
        conn.data_to_send()


@pytest.mark.parametrize("frame_size", SIZES)
def test_receive_path(benchmark: BenchmarkFixture, figures: list[str], frame_size: int) -> None:
    per_slice = HALF // frame_size
    frame = F.data(2, b"r" * frame_size)
    slices = [frame * per_slice] * (TOTAL // (per_slice * frame_size))
    payload = per_slice * frame_size
    benchmark.extra_info["payload_bytes"] = len(slices) * payload
    benchmark.pedantic(run_receive, args=(slices, payload), rounds=5, iterations=1, warmup_rounds=1)
    rate = len(slices) * payload / benchmark.stats.stats.mean / 1e6
    figures.append(f"core receive_data  {frame_size:>6} B frames: {rate:8.1f} MB/s")


def run_send(frame_size: int, window_update: bytes) -> None:
    conn = Connection(client=True, config=MuxConfig(max_frame_bytes=frame_size))
    stream_id = conn.open_stream()
    conn.data_to_send()
    chunk = b"s" * HALF
    for _ in range(TOTAL // HALF):
        conn.send_data(stream_id, chunk)
        while conn.send_buffered(stream_id):
            conn.data_to_send()
            if conn.send_window(stream_id) == 0:
                conn.receive_data(window_update, 0.0)


@pytest.mark.parametrize("frame_size", SIZES)
def test_send_path(benchmark: BenchmarkFixture, figures: list[str], frame_size: int) -> None:
    window_update = F.window_update(1, INITIAL_STREAM_WINDOW)
    benchmark.extra_info["payload_bytes"] = TOTAL
    benchmark.pedantic(
        run_send, args=(frame_size, window_update), rounds=5, iterations=1, warmup_rounds=1
    )
    rate = TOTAL / benchmark.stats.stats.mean / 1e6
    figures.append(f"core send_data+data_to_send {frame_size:>6} B frames: {rate:8.1f} MB/s")


def run_mixed(light_streams: int, rounds: int, window_update_for: dict[int, bytes]) -> int:
    """One bulk stream and `light_streams` streams with a 64 B message each per round: the
    scheduler's two classes (light first, at most half a batch) at work."""
    conn = Connection(client=True)
    bulk = conn.open_stream()
    lights = [conn.open_stream() for _ in range(light_streams)]
    conn.data_to_send()
    message, chunk = b"m" * 64, b"b" * HALF
    frames = 0
    for _ in range(rounds):
        if conn.send_buffered(bulk) < HALF:
            conn.send_data(bulk, chunk)
        for stream_id in lights:
            conn.send_data(stream_id, message)
        frames += len(conn.data_to_send()) // 2
        for stream_id in (bulk, *lights):
            if conn.send_window(stream_id) < HALF:
                conn.receive_data(window_update_for[stream_id], 0.0)
    return frames


@pytest.mark.parametrize("light_streams", [1, 50, 500])
def test_send_path_bulk_beside_light_streams(
    benchmark: BenchmarkFixture, figures: list[str], light_streams: int
) -> None:
    rounds = 200
    updates = {
        stream_id: F.window_update(stream_id, INITIAL_STREAM_WINDOW)
        for stream_id in range(1, 2 * light_streams + 3, 2)
    }
    frames = benchmark.pedantic(
        run_mixed, args=(light_streams, rounds, updates), rounds=5, iterations=1, warmup_rounds=1
    )
    per_frame_us = benchmark.stats.stats.mean / frames * 1e6
    figures.append(
        f"core mixed send, 1 bulk + {light_streams:>3} light streams: {per_frame_us:6.2f} us/frame"
    )
