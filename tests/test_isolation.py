"""The pure parts of isolation, one by one: quotas with a guaranteed share, the admission gate,
refusal counting, safe text, port reservations, the accept loop, the HTTP head reader.

The attacks that need real processes are in `tests/attacks/test_isolation_*.py`.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import anyio
import anyio.abc
import pytest
import testenv
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.admission import AdmissionGate
from muxtunnel.log import Refusals, safe_text
from muxtunnel.quota import Quota
from muxtunnel.server._registry import ActiveService, Registry
from muxtunnel.transport import TcpListener
from muxtunnel.web.httpd import DENIED, _read_head


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


class Recorder:
    """A logger that keeps what it was asked to log."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **context: Any) -> None:
        self.lines.append((event, context))


# --- quota ---


def test_each_service_gets_its_guarantee_whatever_the_others_do() -> None:
    quota = Quota(1023)
    a, b = quota.share("a"), quota.share("b")
    taken = 0
    while a.take():
        taken += 1
    assert taken == 1023 - 255  # its guarantee (1023 // 4) plus the unguaranteed half
    assert sum(b.take() for _ in range(300)) == 255  # b's guarantee, all of it
    assert quota.used == 1023


def test_a_lone_service_may_use_everything() -> None:
    quota = Quota(100)
    a = quota.share("a")
    assert sum(a.take() for _ in range(150)) == 100


def test_a_service_that_leaves_gives_its_guarantee_back() -> None:
    quota = Quota(100)
    a, b = quota.share("a"), quota.share("b")
    assert sum(a.take() for _ in range(100)) == 75
    b.leave()
    assert sum(a.take() for _ in range(100)) == 25
    a.give_back(10)
    assert a.used == 90 and quota.used == 90


def test_units_can_be_bytes() -> None:
    quota = Quota(64 * 2**20)
    a, b = quota.share("a"), quota.share("b")
    stream_bytes = 3_496_000
    assert sum(a.take(stream_bytes) for _ in range(30)) == 14  # 16 MiB own + 32 MiB pool
    assert sum(b.take(stream_bytes) for _ in range(30)) == 5  # its 16 MiB + the pool's rest


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["take", "back", "leave", "join"])),
        max_size=300,
    )
)
def test_quota_never_exceeds_capacity_and_always_honours_a_guarantee(
    steps: list[tuple[str, str]],
) -> None:
    capacity = 60
    quota = Quota(capacity)
    shares = {name: quota.share(name) for name in "abc"}
    members = set("abc")
    for name, action in steps:
        share = shares[name]
        if action == "take":
            before = share.used
            allowed = share.take()
            if name in members and before < quota.guaranteed and quota.used < capacity:
                # Within its guarantee: refused only if the others overcommitted before it
                # joined (they give units back in time).
                others = quota.used - before
                assert allowed or others > capacity - quota.guaranteed * len(members)
        elif action == "back" and share.used:
            share.give_back()
        elif action == "leave":
            share.leave()
            members.discard(name)
        elif action == "join":
            shares[name] = quota.share(name)
            members.add(name)
        assert 0 <= quota.used <= capacity
        assert quota.used == sum(s.used for s in shares.values())


# --- admission gate, refusals, safe text ---


@pytest.mark.anyio
async def test_the_gate_refuses_past_the_per_source_cap_and_evicts_the_oldest() -> None:
    refusals = Refusals(Recorder())
    gate = AdmissionGate(refusals, kind="http", what="admin api")
    first = gate.admit("10.0.0.1", total=3, per_source=2)
    assert first is not None and gate.admit("10.0.0.1", 3, 2) is not None
    assert gate.admit("10.0.0.1", 3, 2) is None
    gate.admit("10.0.0.2", 3, 2)
    gate.admit("10.0.0.3", 3, 2)  # full: the oldest goes
    assert first.scope.cancel_called
    assert refusals.counts == {"http_per_source": 1, "http_evicted": 1}
    assert len(gate) == 3


def test_refusals_log_at_doubling_counts_also_in_bulk() -> None:
    logger = Recorder()
    refusals = Refusals(logger)
    for _ in range(100):
        refusals.refuse("x", "refused")
    refusals.refuse("y", "bulk", n=1000)
    refusals.refuse("y", "bulk", n=24)  # 1000 -> 1024 passes a power of two
    refusals.refuse("y", "bulk", n=1)
    counts = [context["count"] for event, context in logger.lines if event == "refused"]
    assert counts == [1, 2, 4, 8, 16, 32, 64]
    assert [c["count"] for e, c in logger.lines if e == "bulk"] == [1000, 1024]
    assert refusals["x"] == 100 and refusals["y"] == 1025 and refusals["z"] == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("two\nlines", "two\\nlines"),
        ("x" * 20, "x" * 7 + "..."),
        ("é" * 8, "é" * 3 + "..."),  # 10 bytes at most: cut on a character boundary
    ],
)
def test_safe_text(text: str, expected: str) -> None:
    assert safe_text(text, 10, 10) == expected


# --- registry: port reservations ---


@pytest.mark.anyio
async def test_a_port_is_reserved_for_its_service_after_its_session_ends() -> None:
    registry = Registry()
    service = ActiveService("web", "tcp", 8080, 1, None, key=b"k" * 32)  # type: ignore[arg-type]
    registry.add(service)
    registry.remove(service, reserve_s=60)
    found = registry.reservation("tcp", 8080)
    assert found is not None
    assert found.belongs_to("web", b"k" * 32)
    assert not found.belongs_to("web", b"x" * 32)  # same name, another token
    assert not found.belongs_to("api", b"k" * 32)
    assert registry.reservation("udp", 8080) is None
    released = ActiveService("api", "tcp", 9090, 1, None, released=True)  # type: ignore[arg-type]
    registry.add(released)
    registry.remove(released, reserve_s=60)  # given up on purpose: no reservation
    assert registry.reservation("tcp", 9090) is None
    registry.reserved[("tcp", 8080)] = found.__class__("web", b"k" * 32, anyio.current_time())
    assert registry.reservation("tcp", 8080) is None  # expired


# --- the accept loop ---


class FlakyListener(anyio.abc.SocketListener):
    """Fails `failures` accepts with EMFILE, then hands out one connection, then waits."""

    def __init__(self, failures: int, stream: anyio.abc.SocketStream) -> None:
        self.failures = failures
        self.stream: anyio.abc.SocketStream | None = stream

    async def accept(self) -> anyio.abc.SocketStream:
        await anyio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        if self.stream is not None:
            stream, self.stream = self.stream, None
            return stream
        await anyio.sleep_forever()
        raise AssertionError

    async def aclose(self) -> None:
        pass

    @property
    def extra_attributes(self) -> dict[Any, Any]:
        return {}


@pytest.mark.anyio
async def test_the_accept_loop_backs_off_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five EMFILE in a row: counted, logged at 1, 2 and 4, backed off, and the next
    connection is still served; a handler that raises costs its connection only."""
    server = socket.create_server(("127.0.0.1", 0))  # its backlog takes the connect
    async with await anyio.connect_tcp("127.0.0.1", server.getsockname()[1]) as client:
        logger = Recorder()
        refusals = Refusals(logger)
        listener = TcpListener(FlakyListener(5, client), "test", refusals)
        handled: list[anyio.abc.SocketStream] = []

        async def handler(stream: anyio.abc.SocketStream) -> None:
            handled.append(stream)
            raise RuntimeError("a bug")

        with anyio.fail_after(5), caplog.at_level(logging.ERROR):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, handler)
                while not handled:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
    server.close()
    assert refusals["accept_error"] == 5
    assert [context["count"] for _, context in logger.lines] == [1, 2, 4]
    assert [context["backoff_s"] for _, context in logger.lines] == [0.005, 0.01, 0.04]
    assert listener.handler_failures == 1


# --- the HTTP head reader ---


class Scripted(anyio.abc.ByteStream):
    """Hands out `chunks` one per receive, then waits for ever (a peer that stalls)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_wrong_token_is_found_before_the_head_ends() -> None:
    stalled = Scripted(b"GET / HTTP/1.1\r\nHost: x\r\nAuthori", b"zation: Bearer nope\r\n")
    with anyio.fail_after(1):
        assert await _read_head(stalled, "secret") is DENIED
    good = Scripted(b"GET / HTTP/1.1\r\nAuthorization: Bearer secret\r\n\r\n")
    with anyio.fail_after(1):
        assert await _read_head(good, "secret") == b"GET / HTTP/1.1\r\nAuthorization: Bearer secret"
