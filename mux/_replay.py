"""Resumption's ledger in the core: the bytes we sent and the peer has not confirmed yet.

A resumable session numbers the carrier's bytes each way from the first: the frames exactly as
the core handed them to its driver (`sent`) or was fed them (the core's `bytes_received`). Each
side tells the other how far it has received with Receipt frames (type 4, stream 0, length =
received mod 2^32) and keeps every byte it sent since the peer's last receipt in this log. When
the carrier breaks and a new one takes its place, the two sides exchange their full received
counts (the application does, before any frame crosses the new carrier) and each first writes
again what its log holds beyond the peer's count. The receiving parser needs no rewinding: the
peer resends from exactly the byte it expects next, a half-read header or body included.

Invariants (numbered for the tests):

1. `acked <= sent` and the log holds exactly the bytes `[acked, sent)`, in order, as read-only
   buffers (a writable one is copied when recorded: whoever lent it may reuse it).
2. `sent - acked <= budget_bytes + overshoot`: `room()` is what the core may still hand out; it
   stops handing out Data once room is gone (control frames still go: they are few and small),
   and one Data frame may overshoot by at most `max_frame_bytes` plus a header.
3. A receipt's 32-bit value names the one count within 2^31 of `acked`: ahead of `acked` and at
   most `sent` it confirms bytes; behind `acked` it is stale (a receipt written again after a
   resume) and changes nothing; ahead of `sent` it is a lie, and a protocol error. The budget is
   capped far below 2^31 (`_const.MAX_REPLAY_BUDGET_BYTES`) so the two cases never overlap.
4. `rewind(peer_received)` accepts only `acked <= peer_received <= sent`; anything else means
   the two sides do not share a past, and the session cannot go on.
"""

from __future__ import annotations

from collections import deque

from mux._const import MAX_REPLAY_BUDGET_BYTES
from mux._errors import MuxError

__all__ = ["ReplayLog", "ResumeError", "unwrap_receipt"]

_MOD = 1 << 32
_HALF = 1 << 31


class ResumeError(MuxError):
    """The session cannot resume: the peer's count of our bytes is outside what we can replay."""


def unwrap_receipt(value: int, acked: int) -> int | None:
    """The full count a 32-bit receipt `value` names (invariant 3); None when it is stale."""
    delta = (value - acked) % _MOD
    if delta >= _HALF:
        return None
    return acked + delta


class ReplayLog:
    """What a resumable core sent, kept until the peer confirms it."""

    __slots__ = ("_buffers", "_pending", "acked", "budget_bytes", "peak_bytes", "sent")

    def __init__(self, budget_bytes: int) -> None:
        if not 0 < budget_bytes <= MAX_REPLAY_BUDGET_BYTES:
            raise ValueError(f"replay budget must be 1..{MAX_REPLAY_BUDGET_BYTES} bytes")
        self.budget_bytes = budget_bytes
        #: Bytes handed to the carrier since the session began (replays not counted twice).
        self.sent = 0
        #: Bytes the peer has confirmed receiving.
        self.acked = 0
        #: Most bytes the log has held at once.
        self.peak_bytes = 0
        self._buffers: deque[memoryview] = deque()
        #: After a rewind: the log's tail, to be written again before anything new.
        self._pending: list[memoryview] = []

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for replay now."""
        return self.sent - self.acked

    def room(self) -> int:
        """Bytes of Data the core may still hand out before it must wait for a receipt."""
        return self.budget_bytes - (self.sent - self.acked)

    @property
    def pending(self) -> bool:
        """Bytes to write again (after a rewind) wait to be taken."""
        return bool(self._pending)

    def record(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """The core handed `buffers` to the carrier: keep them until confirmed (invariant 1)."""
        log = self._buffers
        total = 0
        for buffer in buffers:
            view = buffer if type(buffer) is memoryview else memoryview(buffer)
            if not view.readonly:
                view = memoryview(bytes(view))
            elif view.itemsize != 1:
                view = view.cast("B")
            log.append(view)
            total += view.nbytes
        self.sent += total
        held = self.sent - self.acked
        if held > self.peak_bytes:
            self.peak_bytes = held

    def confirm(self, count: int) -> bool:
        """The peer has received our first `count` bytes: drop them. False if that is no news.

        `ValueError` if `count` is beyond what we sent (the caller names the offence).
        """
        if count > self.sent:
            raise ValueError(f"confirms {count} bytes, only {self.sent} were sent")
        if count <= self.acked:
            return False
        self._drop(count - self.acked)
        self.acked = count
        return True

    def rewind(self, peer_received: int) -> None:
        """A new carrier: the peer has our first `peer_received` bytes; queue the rest again."""
        if not self.acked <= peer_received <= self.sent:
            raise ResumeError(
                f"the peer says it received {peer_received} bytes of ours; we can replay "
                f"from {self.acked} up to {self.sent}"
            )
        self._drop(peer_received - self.acked)
        self.acked = peer_received
        self._pending = list(self._buffers)

    def take_pending(self) -> list[memoryview]:
        """The bytes to write again after a rewind (they stay in the log until confirmed)."""
        pending, self._pending = self._pending, []
        return pending

    def clear(self) -> None:
        """Forget everything kept (resumption was turned off)."""
        self._buffers.clear()
        self._pending = []
        self.acked = self.sent

    def _drop(self, size: int) -> None:
        log = self._buffers
        while size:
            first = log[0]
            length = first.nbytes
            if length <= size:
                log.popleft()
                size -= length
            else:
                log[0] = first[size:]
                size = 0
