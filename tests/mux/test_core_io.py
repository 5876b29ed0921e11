"""The sans-IO core driven with bytes, fed whole, byte by byte and with trailing bytes."""

from __future__ import annotations

import pytest

from mux import (
    Connection,
    DataReceived,
    Flag,
    FrameType,
    GoAwayReceived,
    LocalProtocolError,
    MuxConfig,
    PongReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from mux._const import HEADER_SIZE, INITIAL_STREAM_WINDOW
from mux._frame import decode_header, encode_header
from mux.testing import ConnectionPair, Frame, FrameBuilder, drain_frames, feed, parse_frames

F = FrameBuilder()


def data(stream_id: int, payload: bytes) -> DataReceived:
    return DataReceived(stream_id, memoryview(payload))


def test_header_encoding_matches_the_spec_layout() -> None:
    raw = encode_header(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.ACK, 0x01020304, 0x0A0B0C0D)
    assert len(raw) == HEADER_SIZE
    assert raw == bytes([0, 1, 0, 3, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D])
    assert decode_header(raw) == (0, 1, 3, 0x01020304, 0x0A0B0C0D)


def test_syn_with_data_and_fin(feed_mode: str) -> None:
    server = Connection(client=False)
    wire = F.data(1, b"hello", Flag.SYN) + F.data(1, b" world", Flag.FIN)
    events = feed(server, wire, feed_mode)
    assert events == [StreamOpened(1), data(1, b"hello world"), StreamEnded(1)]
    assert server.is_half_closed(1)


def test_stream_ended_comes_after_the_body(feed_mode: str) -> None:
    server = Connection(client=False)
    wire = F.syn(1) + F.data(1, b"x" * 1000, Flag.FIN)
    assert feed(server, wire, feed_mode) == [StreamOpened(1), data(1, b"x" * 1000), StreamEnded(1)]


def test_our_fin_written_while_a_fin_frame_arrives_loses_nothing() -> None:
    """A Data|FIN frame whose body comes in two reads, and our own FIN written in between:
    the rest of the body and the EOF still arrive, then the stream leaves the table."""
    server = Connection(client=False)
    server.receive_data(F.syn(1), 0.0)
    server.accept_stream(1)
    wire = F.data(1, b"a" * 1000 + b"b" * 1000, Flag.FIN)
    cut = len(wire) - 1000
    assert server.receive_data(wire[:cut], 0.0) == [data(1, b"a" * 1000)]
    assert not server.is_half_closed(1)  # the FIN takes effect after the body
    server.send_eof(1)
    server.data_to_send()  # our FIN leaves
    assert server.has_stream(1)
    assert server.receive_data(wire[cut:], 0.0) == [data(1, b"b" * 1000), StreamEnded(1)]
    assert not server.has_stream(1)


def test_many_frames_in_one_buffer(feed_mode: str) -> None:
    server = Connection(client=False)
    wire = b"".join(
        [
            F.syn(1),
            F.syn(3),
            F.data(3, b"three"),
            F.data(1, b"one"),
            F.ping(7, ack=True),
            F.fin(3),
            F.rst(1),
            F.go_away(0),
        ]
    )
    assert feed(server, wire, feed_mode) == [
        StreamOpened(1),
        StreamOpened(3),
        data(3, b"three"),
        data(1, b"one"),
        PongReceived(7),
        StreamEnded(3),
        StreamReset(1),
        GoAwayReceived(0),
    ]
    assert server.stream_ids() == [3]


def test_data_with_rst_drops_its_body(feed_mode: str) -> None:
    server = Connection(client=False)
    wire = F.syn(1) + F.data(1, b"dropped", Flag.RST) + F.ping(1, ack=True)
    assert feed(server, wire, feed_mode) == [StreamOpened(1), StreamReset(1), PongReceived(1)]
    assert server.stream_count == 0


def test_ping_is_answered_with_the_same_opaque(feed_mode: str) -> None:
    server = Connection(client=False)
    assert feed(server, F.ping(0xDEADBEEF), feed_mode) == []
    assert drain_frames(server) == [Frame(0, FrameType.PING, Flag.ACK, 0, 0xDEADBEEF)]


def test_ack_of_our_stream(feed_mode: str) -> None:
    client = Connection(client=True)
    stream_id = client.open_stream()
    assert drain_frames(client) == [Frame(0, FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0)]
    assert feed(client, F.ack(stream_id), feed_mode) == [StreamAcked(stream_id)]
    assert client.can_open_stream


def test_window_update_wakes_a_blocked_stream(feed_mode: str) -> None:
    client = Connection(client=True)
    stream_id = client.open_stream()
    client.send_data(stream_id, b"a" * (INITIAL_STREAM_WINDOW + 3000))
    sent = [f for f in drain_frames(client) if f.type == FrameType.DATA]
    assert sum(f.length for f in sent) == INITIAL_STREAM_WINDOW
    assert client.send_window(stream_id) == 0
    assert drain_frames(client) == []
    # A few bytes of credit buy no tiny frame while more is waiting (data dribble defence)...
    assert feed(client, F.window_update(stream_id, 4), feed_mode) == []
    assert drain_frames(client) == []
    # ...a real update sends what it allows.
    assert feed(client, F.window_update(stream_id, 2044), feed_mode) == []
    assert [f.body for f in drain_frames(client)] == [b"a" * 2048]
    assert client.send_window(stream_id) == 0
    assert client.send_buffered(stream_id) == 952


def test_empty_input_is_harmless() -> None:
    server = Connection(client=False)
    assert server.receive_data(b"", 0.0) == []
    assert server.receive_data(memoryview(b""), 0.0) == []
    assert not server.has_data_to_send()


def test_input_may_be_any_buffer(feed_mode: str) -> None:
    server = Connection(client=False)
    wire = bytearray(F.data(1, b"abc", Flag.SYN))
    assert server.receive_data(memoryview(wire), 0.0)[1] == data(1, b"abc")


def test_initial_data_rides_in_the_syn_frame() -> None:
    client = Connection(client=True)
    stream_id = client.open_stream(b"hello")
    assert drain_frames(client) == [
        Frame(0, FrameType.DATA, Flag.SYN, stream_id, 5, b"hello"),
    ]


def test_fin_waits_for_queued_bytes() -> None:
    client = Connection(client=True)
    stream_id = client.open_stream(b"x" * 10)
    client.send_eof(stream_id)
    frames = drain_frames(client)
    assert frames == [
        Frame(0, FrameType.DATA, Flag.SYN, stream_id, 10, b"x" * 10),
        Frame(0, FrameType.DATA, Flag.FIN, stream_id, 0, b""),
    ]


def test_fin_never_rides_a_frame_with_a_body() -> None:
    # hashicorp/yamux applies a Data frame's flags before it reads the body: a reader woken by
    # the FIN in between returns EOF and the body is lost. So the FIN follows the last bytes in
    # a frame of its own, whichever way the bytes were cut into frames.
    client = Connection(client=True)
    stream_id = client.open_stream()
    for size in (1, 1000, 70_000, 300_000):
        client.send_data(stream_id, b"y" * size)
    client.send_eof(stream_id)
    frames: list[Frame] = []
    for _ in range(100):
        batch = drain_frames(client, max_bytes=64 * 1024)
        if not batch:
            client.receive_data(F.window_update(stream_id, 1 << 20), 0.0)
            continue
        frames += batch
        if batch[-1].flags & Flag.FIN:
            break
    with_fin = [f for f in frames if f.flags & Flag.FIN]
    assert len(with_fin) == 1 and with_fin[0] is frames[-1]
    assert with_fin[0].length == 0
    assert sum(f.length for f in frames) == 1 + 1000 + 70_000 + 300_000


def test_reset_before_the_syn_left_sends_nothing() -> None:
    client = Connection(client=True)
    stream_id = client.open_stream(b"never sent")
    client.reset_stream(stream_id)
    assert drain_frames(client) == []
    assert client.stream_count == 0
    assert client.budget_used == 0


@pytest.mark.parametrize("op", ["send_data", "send_eof"])
def test_sending_after_eof_is_a_local_error(op: str) -> None:
    client = Connection(client=True)
    stream_id = client.open_stream()
    client.send_eof(stream_id)
    with pytest.raises(LocalProtocolError):
        if op == "send_data":
            client.send_data(stream_id, b"late")
        else:
            client.send_eof(stream_id)


def test_sending_on_an_unknown_stream_is_a_local_error() -> None:
    client = Connection(client=True)
    with pytest.raises(LocalProtocolError):
        client.send_data(99, b"x")


def test_stream_leaves_the_table_after_both_fins() -> None:
    pair = ConnectionPair(auto_accept=True)
    stream_id = pair.client.open_stream(b"ping")
    pair.client.send_eof(stream_id)
    client_events, server_events = pair.pump()
    assert server_events == [
        StreamOpened(stream_id),
        data(stream_id, b"ping"),
        StreamEnded(stream_id),
    ]
    assert client_events == [StreamAcked(stream_id)]
    assert pair.client.stream_count == 1  # the server has not closed its side yet
    pair.server.send_data(stream_id, b"pong")
    pair.server.send_eof(stream_id)
    client_events, _ = pair.pump()
    assert client_events == [data(stream_id, b"pong"), StreamEnded(stream_id)]
    for conn in (pair.client, pair.server):
        assert conn.stream_count == 0
        assert conn.budget_used == 0


def test_chunked_pump_delivers_everything() -> None:
    pair = ConnectionPair(auto_accept=True, auto_read=True, max_chunk=300, seed=3)
    payload = bytes(range(256)) * 3000  # 750 KiB: several window updates
    stream_id = pair.client.open_stream()
    pair.client.send_data(stream_id, payload)
    pair.client.send_eof(stream_id)
    _, server_events = pair.pump()
    received = b"".join(bytes(e.data) for e in server_events if isinstance(e, DataReceived))
    assert received == payload
    assert server_events[-1] == StreamEnded(stream_id)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        MuxConfig(max_streams=0)
    with pytest.raises(ValueError):
        MuxConfig(max_stream_window_bytes=1024)
    with pytest.raises(ValueError):
        MuxConfig(max_frame_bytes=32 * 1024 * 1024)


def test_frame_builder_can_lie() -> None:
    raw = F.data(1, b"abc", length=2**32 - 1, version=9)
    assert raw[:HEADER_SIZE] == bytes([9, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])
    assert raw[HEADER_SIZE:] == b"abc"
    with pytest.raises(ValueError):
        parse_frames(raw)


def test_syn_may_carry_extra_window(feed_mode: str) -> None:
    """hashicorp/yamux opens with a window update whose delta raises our send window."""
    client = Connection(client=True)
    stream_id = client.open_stream()
    client.data_to_send()
    events = feed(client, F.window_update(stream_id, 1000, Flag.ACK), feed_mode)
    assert events == [StreamAcked(stream_id)]
    assert client.send_window(stream_id) == INITIAL_STREAM_WINDOW + 1000
    server = Connection(client=False)
    assert feed(server, F.window_update(1, 5000, Flag.SYN), feed_mode) == [StreamOpened(1)]
    assert server.send_window(1) == INITIAL_STREAM_WINDOW + 5000


def test_our_fin_while_the_peers_last_data_frame_is_half_read_keeps_its_body() -> None:
    """Both sides half-close: the peer's last Data|FIN frame has arrived up to part of its body
    when we write our own FIN. The stream is then closed both ways, yet the rest of the body
    must still be delivered, and its end (the stream was dropped from the table at our FIN, so
    the tail and StreamEnded were lost and the reader waited forever)."""
    server = Connection(client=False)
    assert server.receive_data(F.syn(1), 0.0) == [StreamOpened(1)]
    server.accept_stream(1)
    drain_frames(server)  # the ACK
    body = bytes(range(256)) * 4
    wire = F.data(1, body, Flag.FIN)
    split = HEADER_SIZE + 100
    events = server.receive_data(wire[:split], 0.0)  # the header (with FIN) and 100 bytes
    server.send_eof(1)
    frames = drain_frames(server)
    assert any(frame.flags & Flag.FIN for frame in frames)  # our FIN is out: closed both ways
    events += server.receive_data(wire[split:], 0.0)
    received = b"".join(bytes(event.data) for event in events if isinstance(event, DataReceived))
    assert received == body
    assert events[-1] == StreamEnded(1)
    assert not server.has_stream(1)  # and it leaves the table once the body is in
