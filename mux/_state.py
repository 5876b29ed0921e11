"""A stream's half-close lifecycle as one state and a transition table (python-hyper/h2's idea).

The core keeps one `StreamState` per stream instead of a flag per FIN (queued, sent, received):
every change goes through `TRANSITIONS[(state, input)]`, and a pair that is not in the table is
a typed error, never a silent mix of flags. The opening handshake is not in this table: whether
a stream still waits for the peer's ACK or for our accept is the session's backlog
(`Connection._unacked`, `Connection._unaccepted`), and a SYN still riding our first Data frame
is framing (`_Stream.syn_pending`).

The states are ordered so that the per-frame checks are one integer comparison on a plain int
(`StreamState.X` is an IntEnum; the core stores `int(state)`, which CPython compares fastest):
every state below `REMOTE_CLOSED` may still receive data.

    OPEN --send_eof--> LOCAL_CLOSING --fin_written--> LOCAL_CLOSED
     |                      |                              |
     recv_fin            recv_fin                       recv_fin
     v                      v                              v
    REMOTE_CLOSED --send_eof--> CLOSING --fin_written--> CLOSED

`RESET` (an RST either way) takes every state but `CLOSED` to `CLOSED`. A stream leaves the
core's table exactly when it reaches `CLOSED`.
"""

from __future__ import annotations

import enum

from mux._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["TRANSITIONS", "StreamInput", "StreamState", "next_state"]


class StreamState(enum.IntEnum):
    """Where a stream is in its half-close lifecycle (order matters: see the module doc)."""

    #: Both ways open.
    OPEN = 0
    #: We half-closed: our FIN waits behind the bytes still buffered.
    LOCAL_CLOSING = 1
    #: Our FIN has been written; the peer may still send.
    LOCAL_CLOSED = 2
    #: The peer's FIN arrived; we may still send.
    REMOTE_CLOSED = 3
    #: The peer's FIN arrived and ours waits behind the bytes still buffered.
    CLOSING = 4
    #: Both FINs passed, or a reset: the stream leaves the table.
    CLOSED = 5


class StreamInput(enum.Enum):
    """What can happen to a stream's lifecycle."""

    SEND_EOF = "send_eof"  # the application half-closed
    FIN_WRITTEN = "fin_written"  # our FIN left in a frame
    RECV_FIN = "recv_fin"  # the peer's FIN arrived
    RESET = "reset"  # an RST, sent or received

    @property
    def remote(self) -> bool:
        """True if the input comes from the peer (a bad one is then the peer's fault)."""
        return self is StreamInput.RECV_FIN


_S, _I = StreamState, StreamInput

#: (state, input) -> next state. Missing pairs are errors (see `next_state`).
TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (_S.OPEN, _I.SEND_EOF): _S.LOCAL_CLOSING,
    (_S.OPEN, _I.RECV_FIN): _S.REMOTE_CLOSED,
    (_S.LOCAL_CLOSING, _I.FIN_WRITTEN): _S.LOCAL_CLOSED,
    (_S.LOCAL_CLOSING, _I.RECV_FIN): _S.CLOSING,
    (_S.LOCAL_CLOSED, _I.RECV_FIN): _S.CLOSED,
    (_S.REMOTE_CLOSED, _I.SEND_EOF): _S.CLOSING,
    (_S.CLOSING, _I.FIN_WRITTEN): _S.CLOSED,
    **{(state, _I.RESET): _S.CLOSED for state in StreamState if state is not _S.CLOSED},
}

#: The same table on plain ints, for the core (an IntEnum key hashes through its class).
_INT_TRANSITIONS: dict[tuple[int, StreamInput], int] = {
    (int(state), event): int(after) for (state, event), after in TRANSITIONS.items()
}


def next_state(stream_id: int, state: int, event: StreamInput) -> int:
    """The state after `event`, or the error whose fault it is: `RemoteProtocolError` for a
    peer's input the state does not allow, `LocalProtocolError` for one of ours."""
    try:
        return _INT_TRANSITIONS[(state, event)]
    except KeyError:
        what = f"stream {stream_id}: {event.value} in state {StreamState(state).name}"
        raise (RemoteProtocolError if event.remote else LocalProtocolError)(what) from None
