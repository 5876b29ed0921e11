"""Accepting TCP connections ourselves: one reader per listening socket, every queued
connection per wake-up.

anyio's `accept` costs each connection a loop turn before it even waits (a checkpoint), a
reader added and removed on the listening socket (four `epoll_ctl` and an `ioctl` under
uvloop) and a TCP_NODELAY that the loop's transport sets again. `Acceptor` keeps its reader
registered while it serves and accepts until the kernel's queue is empty (EAGAIN) or a batch
is full, so a burst of visitors costs a wake-up per batch, and a lone one no system call
beyond its `accept4` (and one EAGAIN).

Invariants:

1. The reader is registered only while the acceptor waits for readiness or accepts. Waiting
   for anything else (a setting-up slot, a back-off after an error) it is removed first: the
   listening socket stays readable while connections are queued, and a level-triggered
   reader left registered would spin the event loop.
2. At most `ACCEPT_BATCH` connections per wake-up (one without `slots`): a flood takes turns
   with the loop's other work. With `slots`, a connection is accepted only with one of them
   in hand: a flood of new connections waits in the kernel's queue, not in our event loop.
3. An accept error never ends the loop: `Backoff` waits (5 ms doubling to 1 s) and the next
   accept tries again; the caller counts and logs each failure.
4. `close()` removes the reader before the listening socket is closed, and the acceptor ends
   with `ClosedResourceError`, as anyio's `accept` does on a closed listener.

The setting-up slots themselves are here too (`take_slot`, `setup_done`), for
`muxtunnel.transport.TcpListener`, which re-exports them.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable

import anyio

__all__ = [
    "ACCEPT_BACKOFF_MAX_S",
    "ACCEPT_BACKOFF_MIN_S",
    "ACCEPT_BATCH",
    "SETUP_SLOT",
    "Acceptor",
    "Backoff",
    "SetupSlot",
    "setup_done",
    "take_slot",
]

#: After a failed accept, wait this long before the next, doubling up to the maximum (Go's
#: net/http `Server.Serve`: 5 ms to 1 s): an fd shortage lasts until some connection closes.
ACCEPT_BACKOFF_MIN_S = 0.005
ACCEPT_BACKOFF_MAX_S = 1.0
#: Connections accepted per wake-up at most, for a listener with setting-up slots (whose
#: count bounds what is in flight anyway); one without takes one per wake-up, as anyio's
#: accept did. Then the loop's other work has its turn before the next (the socket is still
#: readable: the reader wakes us again). Unbounded, 1500 connections at once to the admin
#: port held the loop long enough to triple a neighbour's worst round trip, and held 113
#: sockets accepted but not yet served (tests/attacks/test_isolation_http.py).
ACCEPT_BATCH = 16


class Backoff:
    """The wait after failed accepts in a row; `on_failure(exc, backoff_s)` counts and logs."""

    __slots__ = ("_on_failure", "delay_s")

    def __init__(self, on_failure: Callable[[OSError, float], None]) -> None:
        self._on_failure = on_failure
        self.delay_s = 0.0

    async def failed(self, exc: OSError) -> None:
        """Report one failed accept, then wait before the next."""
        self.delay_s = min(max(2 * self.delay_s, ACCEPT_BACKOFF_MIN_S), ACCEPT_BACKOFF_MAX_S)
        self._on_failure(exc, self.delay_s)
        await anyio.sleep(self.delay_s)

    def reset(self) -> None:
        """An accept succeeded: the next failure waits the least again."""
        self.delay_s = 0.0


class Acceptor:
    """Accepts from one non-blocking listening socket and hands each connection to `spawn`."""

    def __init__(
        self,
        sock: socket.socket,
        spawn: Callable[[socket.socket], None],
        slots: anyio.Semaphore | None,
        backoff: Backoff,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._spawn = spawn
        self._slots = slots
        self._backoff = backoff
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readable = asyncio.Event()
        self._watching = False
        self._closed = False

    async def run(self) -> None:
        """Accept until cancelled (or `close`d: `ClosedResourceError`)."""
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        try:
            while True:
                self._watch()
                await self._readable.wait()
                self._readable.clear()
                await self._accept_queued()
        finally:
            self._unwatch()

    def close(self) -> None:
        """Stop before the listening socket is closed (its reader goes first)."""
        self._closed = True
        self._unwatch()
        self._readable.set()

    async def _accept_queued(self) -> None:
        slots = self._slots
        for _ in range(ACCEPT_BATCH if slots is not None else 1):
            if self._closed:
                raise anyio.ClosedResourceError
            if slots is not None:
                try:
                    slots.acquire_nowait()
                except anyio.WouldBlock:
                    self._unwatch()
                    await slots.acquire()
            try:
                client, _ = self._sock.accept()
            except BlockingIOError:  # the queue is empty: wait for the next readiness
                if slots is not None:
                    slots.release()
                return
            except OSError as exc:
                if slots is not None:
                    slots.release()
                if self._closed:
                    raise anyio.ClosedResourceError from None
                self._unwatch()
                await self._backoff.failed(exc)
                continue
            self._backoff.reset()
            self._spawn(client)

    def _watch(self) -> None:
        if not self._watching and not self._closed and self._loop is not None:
            self._loop.add_reader(self._fd, self._readable.set)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            self._watching = False
            self._loop.remove_reader(self._fd)


class SetupSlot:
    """A connection's place among those being set up; released once."""

    __slots__ = ("_slots",)

    def __init__(self, slots: anyio.Semaphore | None) -> None:
        self._slots = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


SETUP_SLOT: contextvars.ContextVar[SetupSlot] = contextvars.ContextVar("muxtunnel_setup_slot")


async def take_slot(slots: anyio.Semaphore) -> None:
    """Take one of `slots`: at once when one is free, else wait for one.

    anyio's `Semaphore.acquire` yields to the loop even when a slot is free: one more loop turn
    on a new visitor's way to its service, for each semaphore it passes (the accept loop's
    `setting_up`, the client's dial slots).
    """
    try:
        slots.acquire_nowait()
    except anyio.WouldBlock:
        await slots.acquire()


def setup_done() -> None:
    """The connection this task serves is set up: its listener may accept the next one (see
    `setting_up` of a listener's `serve`). Nothing outside such a handler."""
    slot = SETUP_SLOT.get(None)
    if slot is not None:
        slot.release()
