"""The stream lifecycle table (`mux/_state.py`) on its own, and the core following it."""

from __future__ import annotations

import pytest

from mux import LocalProtocolError, RemoteProtocolError
from mux._state import TRANSITIONS, StreamInput, StreamState, next_state
from mux.testing import ConnectionPair

S, In = StreamState, StreamInput


def test_every_state_is_reachable_from_open_and_reaches_closed() -> None:
    reached = {S.OPEN}
    for _ in range(len(S)):
        reached |= {after for (state, _), after in TRANSITIONS.items() if state in reached}
    assert reached == set(S)
    for state in S:
        if state is not S.CLOSED:
            assert TRANSITIONS[(state, In.RESET)] is S.CLOSED


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([In.SEND_EOF, In.FIN_WRITTEN, In.RECV_FIN], S.CLOSED),
        ([In.SEND_EOF, In.RECV_FIN, In.FIN_WRITTEN], S.CLOSED),
        ([In.RECV_FIN, In.SEND_EOF, In.FIN_WRITTEN], S.CLOSED),
        ([In.SEND_EOF, In.FIN_WRITTEN], S.LOCAL_CLOSED),
        ([In.RECV_FIN], S.REMOTE_CLOSED),
        ([In.RECV_FIN, In.RESET], S.CLOSED),
    ],
)
def test_paths_through_the_table(path: list[StreamInput], end: StreamState) -> None:
    state = int(S.OPEN)
    for event in path:
        state = next_state(1, state, event)
    assert state == end


@pytest.mark.parametrize(
    ("state", "event", "error"),
    [
        (S.LOCAL_CLOSING, In.SEND_EOF, LocalProtocolError),  # half-closed twice
        (S.OPEN, In.FIN_WRITTEN, LocalProtocolError),  # a FIN nobody asked for
        (S.CLOSED, In.RESET, LocalProtocolError),
        (S.REMOTE_CLOSED, In.RECV_FIN, RemoteProtocolError),  # the peer's fault, typed so
        (S.CLOSED, In.RECV_FIN, RemoteProtocolError),
    ],
)
def test_a_missing_entry_is_a_typed_error(
    state: StreamState, event: StreamInput, error: type[Exception]
) -> None:
    assert (state, event) not in TRANSITIONS
    with pytest.raises(error, match=f"stream 7: {event.value} in state {state.name}"):
        next_state(7, int(state), event)


def test_receiving_states_come_first() -> None:
    """The core's per-frame check is `state < REMOTE_CLOSED`: it must mean "no FIN received"."""
    receiving = {S.OPEN, S.LOCAL_CLOSING, S.LOCAL_CLOSED}
    assert {state for state in S if state < S.REMOTE_CLOSED} == receiving
    for state in receiving:
        assert (state, In.RECV_FIN) in TRANSITIONS


def test_the_core_walks_the_table_as_fins_pass() -> None:
    pair = ConnectionPair(auto_accept=True)
    stream_id = pair.client.open_stream(b"request")
    pair.client.send_eof(stream_id)
    assert pair.client.stream_state(stream_id) is S.LOCAL_CLOSING  # FIN behind the SYN frame
    pair.pump()
    assert pair.client.stream_state(stream_id) is S.LOCAL_CLOSED
    assert pair.server.stream_state(stream_id) is S.REMOTE_CLOSED
    assert pair.server.is_half_closed(stream_id)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(stream_id, b"more")
    pair.server.send_data(stream_id, b"response")
    pair.server.send_eof(stream_id)
    assert pair.server.stream_state(stream_id) is S.CLOSING  # our FIN waits behind the bytes
    pair.pump()
    assert not pair.server.has_stream(stream_id)  # both FINs passed: gone
    assert pair.client.stream_state(stream_id) is S.CLOSED
    assert pair.client.stream_count == pair.server.stream_count == 0


def test_backlogs_count_streams_until_acked_and_accepted() -> None:
    pair = ConnectionPair()
    first, second = pair.client.open_stream(), pair.client.open_stream()
    assert pair.client.unacked == 2
    pair.pump()
    assert pair.server.unaccepted == 2
    pair.server.accept_stream(first)
    pair.server.accept_stream(first)  # twice: no effect
    pair.pump()
    assert pair.server.unaccepted == 1 and pair.client.unacked == 1
    pair.client.reset_stream(second)  # never accepted: leaves both backlogs
    pair.pump()
    assert pair.server.unaccepted == 0 and pair.client.unacked == 0
