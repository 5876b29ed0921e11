"""Bad input never crashes a connection handler; one bad visitor cannot starve the others."""

from __future__ import annotations

import socket
import time

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mux.testing import memory_stream_pair
from muxtunnel.vhost import RouteTarget, VhostConfig, VhostEngine, Visitor

from .helpers import TIMEOUT_S, address_of, backend, request, running_proxy


class MemoryUpstream:
    """An `Upstream` whose service is a task answering every request head with a tiny 200."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        ours, theirs = memory_stream_pair(64 * 1024)
        self.tg.start_soon(self._serve, theirs)
        return ours

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        buffer = b""
        try:
            while True:
                buffer += await stream.receive()
                while b"\r\n\r\n" in buffer:
                    _, _, buffer = buffer.partition(b"\r\n\r\n")
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


_LINES = [
    b"GET / HTTP/1.1\r\n", b"POST /up HTTP/1.1\r\n", b"GET http://app.example.com/x HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n", b"CONNECT a:1 HTTP/1.1\r\n", b"OPTIONS * HTTP/1.1\r\n",
    b"HEAD /a/../b HTTP/1.1\r\n", b"GET /%zz HTTP/1.1\r\n",
]  # fmt: skip
_HEADERS = [
    b"Host: app.example.com\r\n", b"Host: app.example.com\r\n", b"Host: nobody.example.com\r\n",
    b"Host: \xff\xfe\r\n", b"Host: [::1]:80\r\n", b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
    b"Connection: upgrade\r\n", b"Upgrade: websocket\r\n", b"Connection: close\r\n",
    b"X-A: \x00\r\n", b" folded\r\n", b"Authorization: Basic !!\r\n",
]  # fmt: skip
_BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"\r\n", b"he"]

one_request = st.tuples(
    st.sampled_from(_LINES),
    st.lists(st.sampled_from(_HEADERS), max_size=6),
    st.sampled_from(_BODIES),
).map(lambda parts: parts[0] + b"".join(parts[1]) + b"\r\n" + parts[2])
requests = st.one_of(
    st.binary(max_size=3000),
    st.lists(one_request, min_size=1, max_size=3).map(b"".join),
    st.lists(st.sampled_from(_LINES + _HEADERS + _BODIES), max_size=30).map(b"".join),
)


async def _serve_bytes(data: bytes, cut_points: list[int]) -> tuple[bytes, VhostEngine]:
    config = VhostConfig(head_timeout_s=0.5, idle_timeout_s=0.5, linger_s=0.1)
    async with anyio.create_task_group() as tg:
        engine = VhostEngine(MemoryUpstream(tg), config)
        engine.http_routes.add(RouteTarget("app", "c1"), ["app.example.com"])
        client, server = memory_stream_pair()
        tg.start_soon(engine.serve_http, server, Visitor("192.0.2.1", 4000))
        received = bytearray()
        with anyio.fail_after(5):
            start = 0
            for cut in [*sorted(cut_points), len(data)]:
                try:
                    await client.send(data[start:cut])
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                start = max(start, cut)
            try:
                await client.send_eof()
                while True:
                    received += await client.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        await client.aclose()
        tg.cancel_scope.cancel()
    return bytes(received), engine


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.lists(st.integers(min_value=0, max_value=3000), max_size=5))
def test_random_bytes_never_crash_the_handler(data: bytes, cut_points: list[int]) -> None:
    received, engine = anyio.run(_serve_bytes, data, cut_points)
    assert engine.counters.internal_errors == 0
    # Whatever came back is HTTP: responses (ours or the service's), nothing else.
    assert received == b"" or received.startswith(b"HTTP/1.1 "), received[:100]


def test_per_source_cap_refuses_the_extra_connection_only() -> None:
    config = VhostConfig(max_connections_per_source=3, head_timeout_s=5.0)
    with running_proxy(config) as proxy, backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        held = [
            socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S)
            for _ in range(3)
        ]
        try:
            for sock in held:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: app.exa")  # three slowloris connections
            time.sleep(0.2)
            try:  # the reset may come before connect() or sendall() returns, or at recv()
                with socket.create_connection(
                    ("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S
                ) as extra:
                    extra.sendall(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                    assert extra.recv(100) == b""
            except ConnectionResetError:
                pass
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert request(proxy.http_port, "app.example.com").status == 200  # room again
        snap = proxy.snapshot()
        assert snap.refusals["too_many_from_source"] == 1
        assert proxy.portal.call(lambda: len(proxy.engine.limiter)) <= 1


def test_a_bug_in_one_connection_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_proxy() as proxy, backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))

        def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError("a bug")

        # Both request paths: h11's and the fast path of plain requests.
        monkeypatch.setattr("muxtunnel.vhost.http.request_headers", broken)
        monkeypatch.setattr("muxtunnel.vhost._fastpath.request_headers", broken)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        monkeypatch.undo()
        assert request(proxy.http_port, "app.example.com").status == 200
        snap = proxy.snapshot()
        assert snap.internal_errors == 1
