"""Session configuration: every tunable number of the multiplexer, with its unit in its name.

Defaults follow hashicorp/yamux (`mux.go` DefaultConfig) where the wire demands it (the 256 KiB
initial window) and the hardening limits collected in the project's security notes elsewhere
(nghttp2's reset and "glitch" budgets, libp2p's ACK backlog of 256, go-yamux's 32 queued pongs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mux._const import INITIAL_STREAM_WINDOW, MAX_REPLAY_BUDGET_BYTES, MAX_WINDOW

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Tunables of one session. Validated once, at construction."""

    #: Largest Data frame we send: how long one stream may hold the carrier (go-yamux: 64 KiB).
    max_frame_bytes: int = 64 * KIB
    #: Receive window a stream may grow to by auto-tuning (go-yamux's MaxStreamWindowSize).
    max_stream_window_bytes: int = 16 * MIB
    #: Sum of all streams' receive windows on one session (bounds buffered memory per peer).
    session_receive_budget_bytes: int = 256 * MIB
    #: Bytes a writer may hand to a stream before `send` waits for the carrier to take them.
    stream_send_buffer_bytes: int = 512 * KIB
    #: Un-accepted inbound streams; a SYN beyond this is answered with RST (libp2p spec: 256).
    accept_backlog: int = 256
    #: Open streams per session, both directions; a SYN beyond this is answered with RST.
    max_streams: int = 1024
    #: Pongs waiting to be written; at the cap the session stops reading the carrier.
    max_queued_pongs: int = 32
    #: Peer resets allowed in a burst, then per second (nghttp2's rapid-reset limiter).
    reset_burst: int = 1000
    reset_rate_per_s: float = 33.0
    #: Legal but useless frames (empty Data, zero WindowUpdate, frames for closed streams, pings).
    glitch_burst: int = 10_000
    glitch_rate_per_s: float = 330.0
    #: Hard cap on a Data frame's length, checked from the header before any body byte.
    max_data_frame_bytes: int = 16 * MIB
    #: Keepalive: ping this often when enabled; the session dies if no pong within the timeout.
    keepalive_interval_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    enable_keepalive: bool = True
    #: A carrier write that makes no progress this long kills the session (hashicorp: 10 s).
    write_timeout_s: float = 10.0
    #: After our GoAway, streams get this long to finish before the carrier is closed.
    go_away_drain_s: float = 30.0
    #: A stream we opened that the peer has not ACKed by then is reset (hashicorp: 75 s).
    stream_open_timeout_s: float = 75.0
    #: A stream half-closed this long is reset (hashicorp StreamCloseTimeout: 5 min).
    half_closed_timeout_s: float = 300.0
    #: Bytes asked of the carrier per read.
    read_size_bytes: int = 256 * KIB
    #: Bytes the writer gathers into one carrier write.
    write_batch_bytes: int = 256 * KIB
    #: Resumable sessions only (`Session(resumable=True)`): bytes sent and not yet confirmed
    #: by the peer that are kept to write again on a new carrier. At the cap, Data waits for
    #: the peer's receipts: a path's throughput is then at most budget / round trip, so the
    #: budget must hold a fast path's bytes in flight and in both kernels' socket buffers
    #: (1 Gbit/s at 50 ms is 6 MiB in flight, plus up to 4 + 6 MiB of Linux's default
    #: tcp_wmem/tcp_rmem maximums): 32 MiB leaves room (`bench`'s resume rows measure it).
    replay_budget_bytes: int = 32 * MIB
    #: Resumable sessions: a Receipt goes back after this many bytes received (and with every
    #: ping), so the peer's replay log drains long before it reaches its budget.
    receipt_every_bytes: int = 512 * KIB
    #: Resumable sessions: how long a session whose carrier was lost waits for a new one
    #: before it ends as an unresumable one does (streams reset).
    resume_timeout_s: float = 60.0
    #: Unsent bytes the carrier's kernel send queue may hold (TCP_NOTSENT_LOWAT): beyond it,
    #: frames wait in our scheduler, where a small message can still go ahead of bulk. 128 KiB
    #: is ~0.1 ms at 10 Gbit/s; CPU per MiB of bulk on loopback stays the same (bench.cost).
    carrier_unsent_bytes: int = 128 * KIB
    #: The carrier's kernel receive buffer while light and heavy streams share it, judged per
    #: `carrier_mix_window_s`, on sessions whose round trip is under `carrier_short_rtt_s`
    #: (`mux._carrier.ReceiveBuffer`; Linux doubles the size for its bookkeeping).
    carrier_mixed_receive_buffer_bytes: int = 256 * KIB
    carrier_mix_window_s: float = 0.1
    carrier_short_rtt_s: float = 0.005

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"MuxConfig.{field.name} must be a positive number, got {value!r}")
        if not INITIAL_STREAM_WINDOW <= self.max_stream_window_bytes <= MAX_WINDOW:
            raise ValueError(
                f"MuxConfig.max_stream_window_bytes must be between {INITIAL_STREAM_WINDOW} and "
                f"{MAX_WINDOW}, got {self.max_stream_window_bytes}"
            )
        if self.session_receive_budget_bytes < INITIAL_STREAM_WINDOW:
            raise ValueError("MuxConfig.session_receive_budget_bytes must hold one initial window")
        if self.max_frame_bytes > self.max_data_frame_bytes:
            raise ValueError("MuxConfig.max_frame_bytes must not exceed max_data_frame_bytes")
        if self.replay_budget_bytes > MAX_REPLAY_BUDGET_BYTES:
            raise ValueError(
                f"MuxConfig.replay_budget_bytes must be at most {MAX_REPLAY_BUDGET_BYTES}"
            )
        if self.receipt_every_bytes > self.replay_budget_bytes // 2:
            raise ValueError(
                "MuxConfig.receipt_every_bytes must be at most half of replay_budget_bytes"
            )

    def replace(self, **changes: object) -> MuxConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
