"""The web pages without a browser: the dashboard's sampler and event stream, the token guard,
the inspector's replay and port fallback, and the config keys and flags that turn them on."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e.harness import free_port

from muxtunnel.captures import Captures
from muxtunnel.cli import _client_overrides, _load_server, build_parser
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.httptap import Tap
from muxtunnel.model import ClientConfig, Endpoint, Secret, ServiceSpec
from muxtunnel.status import (
    ClientStatus,
    ConnectionRow,
    ServerStatus,
    ServiceRow,
    SessionRow,
    TrafficRow,
)
from muxtunnel.transport import TransportError
from muxtunnel.web.asgi import COOKIE, loopback_only, with_token
from muxtunnel.web.dashboard import Sampler, _events
from muxtunnel.web.inspector import bind_first_free, replay
from muxtunnel.web.inspector import make_app as make_inspector
from muxtunnel.web.pages import inspector_endpoint

TOKEN = "0123456789abcdef0123456789"


def server_status(
    bytes_out: int, sessions: tuple[int, ...] = (1,), refusals: dict[str, int] | None = None
) -> ServerStatus:
    return ServerStatus(
        version="test", bind="127.0.0.1:7835", tls=None, uptime_s=1.0, auth_failures=0,
        sessions=tuple(SessionRow(i, f"10.0.0.{i}:5000", 1.0, None, 1, ("web",)) for i in sessions),
        services=(ServiceRow("web", "http", "http://web.example.com", open_connections=2),),
        traffic=(TrafficRow("web", bytes_out // 10, bytes_out, 2, 5),),
        refusals=refusals or {},
    )  # fmt: skip


class Feed:
    """A status callable whose next snapshot the test sets."""

    def __init__(self, status: ServerStatus) -> None:
        self.status = status

    def __call__(self) -> ServerStatus:
        return self.status


def test_the_sampler_turns_counters_into_rates_in_a_bounded_ring() -> None:
    feed = Feed(server_status(0))
    sampler = Sampler(feed, points=3)
    for second in range(5):
        feed.status = server_status(second * 1000)
        sampler.sample(now=100.0 + second)
    points = list(sampler.series["web"])
    assert len(points) == 3  # the ring's bound
    assert points[-1] == (104.0, 100.0, 1000.0, 2)  # 100 B/s in, 1000 B/s out, 2 open
    assert sampler.seq == 5
    document = json.loads(json.dumps(sampler.document()))
    assert document["status"]["services"][0]["name"] == "web"
    assert document["series"]["web"][-1] == [104.0, 100.0, 1000.0, 2]


def test_a_tick_carries_at_most_a_hundred_open_connections() -> None:
    rows = tuple(
        ConnectionRow("web", f"10.0.{n // 256}.{n % 256}:1", 1.0, 0, 0) for n in range(250)
    )
    feed = Feed(dataclasses.replace(server_status(0), connections=rows))
    sampler = Sampler(feed)
    sampler.sample(now=1.0)
    document = sampler.tick_document()["status"]
    assert len(document["connections"]) == 100 and document["connections_not_shown"] == 150
    assert document["connections"][0]["peer"] == "10.0.0.0:1"  # the oldest first


def test_counters_that_go_back_never_make_a_negative_rate() -> None:
    feed = Feed(server_status(5000))
    sampler = Sampler(feed)
    sampler.sample(now=1.0)
    feed.status = server_status(0)  # the service went and came back: a new counter
    sampler.sample(now=2.0)
    assert sampler.series["web"][-1][1:3] == (0.0, 0.0)


def test_a_service_that_goes_away_takes_its_chart_with_it() -> None:
    feed = Feed(server_status(0))
    sampler = Sampler(feed)
    sampler.sample(now=1.0)
    feed.status = ServerStatus(version="t", bind="b", tls=None, uptime_s=2, auth_failures=0)
    sampler.sample(now=2.0)
    assert sampler.series == {} and sampler.document()["series"] == {}


def test_sessions_and_refusals_that_happened_between_two_samples() -> None:
    feed = Feed(server_status(0, sessions=(1,), refusals={"auth_failed": 2}))
    sampler = Sampler(feed)
    sampler.sample(now=1.0)
    feed.status = server_status(0, sessions=(2,), refusals={"auth_failed": 5, "port_busy": 1})
    sampler.sample(now=2.0)
    events = [(e["event"], e["id"]) for e in sampler.sessions_recent]
    assert events == [("closed", 1), ("opened", 2), ("opened", 1)]
    refusals = [(e["reason"], e["new"], e["total"]) for e in sampler.refusals_recent]
    assert refusals == [("port_busy", 1, 1), ("auth_failed", 3, 5)]  # the baseline is not news


@pytest.mark.anyio
async def test_the_event_stream_sends_the_document_then_ticks_and_ends_on_close() -> None:
    feed = Feed(server_status(0))
    sampler = Sampler(feed)
    sampler.sample(now=1.0)
    stream = _events(sampler)
    received: list[tuple[str, dict[str, Any]]] = []

    def parse(chunk: bytes) -> tuple[str, dict[str, Any]]:
        event, data = chunk.decode().strip().split("\n")
        return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))

    with anyio.fail_after(5):
        received.append(parse(await anext(stream)))
        feed.status = server_status(2000)
        sampler.sample(now=2.0)
        received.append(parse(await anext(stream)))
        sampler.sample(now=3.0)
        sampler.sample(now=4.0)  # this page missed one: the whole document again
        received.append(parse(await anext(stream)))
        sampler.close()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert [name for name, _ in received] == ["full", "tick", "full"]
    assert received[1][1]["points"]["web"] == [2.0, 200.0, 2000.0, 2]
    assert len(received[2][1]["series"]["web"]) == 4


# --- the token guard of the pages ---


async def call(
    app: Any,
    path: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Any:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http", "path": path, "query_string": query.encode(), "method": method,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "root_path": "", "scheme": "http", "server": ("127.0.0.1", 4040),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    head = dict(sent[0]["headers"]) if sent and sent[0]["type"] == "http.response.start" else {}
    return (sent[0]["status"], head) if sent else (None, {})


async def inner_app(scope: Any, receive: Any, send: Callable[..., Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"page"})


@pytest.mark.anyio
async def test_the_pages_want_the_token_in_a_header_or_the_cookie_it_sets() -> None:
    app = with_token(inner_app, TOKEN)
    assert (await call(app, "/"))[0] == 401
    assert (await call(app, "/api/events", headers={"Authorization": "Bearer nope"}))[0] == 401
    assert (await call(app, "/", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert (await call(app, "/", query="token=wrong"))[0] == 401
    status, head = await call(app, "/", query=f"token={TOKEN}")
    assert status == 303 and head[b"location"] == b"/"
    cookie = head[b"set-cookie"].decode()
    value = cookie.split(";")[0].removeprefix(f"{COOKIE}=")
    assert TOKEN not in cookie and len(value) == 64 and "HttpOnly" in cookie
    assert (await call(app, "/api/events", headers={"Cookie": f"{COOKIE}={value}"}))[0] == 200
    assert (await call(app, "/api/events", headers={"Cookie": f"{COOKIE}={TOKEN}"}))[0] == 401
    assert (await call(app, "/api/events", headers={"Cookie": f"{COOKIE}=0{value}"}))[0] == 401


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("localhost:4040", True), ("127.0.0.1:4040", True), ("127.9.9.9", True),
        ("[::1]:4040", True), ("[::1]", True), ("LOCALHOST", True),
        ("evil.example.com:4040", False), ("10.0.0.1:4040", False), ("", False),
        ("[2001:db8::1]:4040", False), ("localhost.evil.example.com", False),
    ],
)  # fmt: skip
async def test_a_page_without_a_token_answers_only_to_loopback_names(
    host: str, answered: bool
) -> None:
    status, _ = await call(loopback_only(inner_app), "/", headers={"Host": host})
    assert status == (200 if answered else 403)


@pytest.mark.anyio
async def test_replay_wants_a_header_that_another_site_cannot_send() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    empty = ClientStatus(version="t", server="s", reconnects=0)
    app = make_inspector(lambda: empty, captures)
    path = f"/api/requests/{captures.exchanges()[0].id}/replay"
    assert (await call(app, path, method="POST"))[0] == 403
    asked = await call(app, path, method="POST", headers={"X-Requested-With": "muxtunnel"})
    assert asked[0] == 409  # past the check: no such service to replay to now
    assert len(captures.exchanges()) == 1


# --- the inspector: replay and its port ---


@pytest.mark.anyio
async def test_replay_sends_the_request_again_to_the_local_service() -> None:
    seen: list[bytes] = []

    async def service(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"hello"):
                data += await stream.receive()
            seen.append(data)
            await stream.send(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")

    captures = Captures()
    tap = Tap(captures, "app", "192.0.2.7:1234")
    tap.feed_request(
        b"POST /items?x=1 HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    tap.feed_response(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    (original,) = captures.exchanges()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, service)
            done = await replay(original, f"127.0.0.1:{port}", captures)
            tg.cancel_scope.cancel()
    assert seen[0].startswith(b"POST /items?x=1 HTTP/1.1\r\n")
    assert b"host: app.example.com\r\n" in seen[0] and b"keep-alive" not in seen[0]
    assert (done.status, done.response_body, done.replay_of) == (201, b"done", original.id)
    assert captures.exchanges()[-1] is done and done.error is None


@pytest.mark.anyio
async def test_a_replay_to_a_service_that_is_down_is_recorded_as_failed() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        done = await replay(captures.exchanges()[0], f"127.0.0.1:{port}", captures)
    assert done.status is None and done.error is not None and "replay failed" in done.error


def test_a_busy_inspector_port_moves_to_the_next_one() -> None:
    port = free_port()  # below the ephemeral range: nobody's outgoing connection takes these
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        found = bind_first_free(Endpoint("127.0.0.1", port), tries=10)
        assert found is not None
        with found:
            assert port < found.getsockname()[1] < port + 10
        with pytest.raises(TransportError, match="already in use"):
            bind_first_free(Endpoint("127.0.0.1", port), tries=1)  # one given: not moved


# --- config and flags ---


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_dashboard_from_the_file_and_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, f"server:\n  token: {TOKEN}\n  dashboard: 127.0.0.1:9000\n")
    assert load_server_config(path, env={}).dashboard == Endpoint("127.0.0.1", 9000)
    args = build_parser().parse_args(["listen", "--token", TOKEN, "--dashboard", "127.0.0.1:9001"])
    assert _load_server(args).dashboard == Endpoint("127.0.0.1", 9001)


def test_a_dashboard_off_loopback_needs_a_token(tmp_path: Path) -> None:
    path = write(tmp_path, f"server:\n  token: {TOKEN}\n  dashboard: 0.0.0.0:9000\n")
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_server_config(path, env={})
    path = write(
        tmp_path,
        f"server:\n  token: {TOKEN}\n  dashboard: {{bind: 0.0.0.0:9000, token: {TOKEN}}}\n",
    )
    assert load_server_config(path, env={}).dashboard == Endpoint("0.0.0.0", 9000, Secret(TOKEN))


def client_config(*flags: str, config: str | None = None) -> ClientConfig:
    args = build_parser().parse_args(["up", "--token", TOKEN, *flags])
    return load_client_config(config, _client_overrides(args), env={})


def test_the_inspector_is_on_by_default_only_with_http_services(tmp_path: Path) -> None:
    assert inspector_endpoint(client_config("--http", "3000")) == (Endpoint("127.0.0.1", 4040), 10)
    assert inspector_endpoint(client_config("--tcp", "3000")) is None
    assert inspector_endpoint(client_config("--http", "3000", "--no-inspect")) is None
    moved = client_config("--tcp", "3000", "--inspect", "127.0.0.1:5050")
    assert inspector_endpoint(moved) == (Endpoint("127.0.0.1", 5050), 1)
    path = write(tmp_path, "client:\n  inspect: false\n")
    assert client_config("--http", "3000", config=path).inspect == "off"
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["up", "--inspect", "127.0.0.1:1", "--no-inspect"])
    spec = client_config("--http", "web=3000").services[0]
    assert isinstance(spec, ServiceSpec) and spec.type == "http"
