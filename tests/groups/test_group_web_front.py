"""`WebFront` without sockets: rate-limited web services answer per request (429 from
`UpstreamRefused`), and a reload that adds or drops the limits re-routes a live service."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import pytest

from muxtunnel.balance.ratelimit import VisitorLimiter
from muxtunnel.balance.settings import RateLimit
from muxtunnel.control import Register
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.model import HttpFront, Secret, ServerConfig
from muxtunnel.server._registry import ActiveService, Registry
from muxtunnel.server._web import WebFront
from muxtunnel.vhost import UpstreamRefused, Visitor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Stream(anyio.abc.ByteStream):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class _Session:
    closed = False

    async def open_stream(self, initial_data: bytes = b"") -> _Stream:
        return _Stream()


def per_request(web: WebFront, name: str) -> bool:
    route = web.engine.http_routes.lookup(f"{name}.example.com", "/")
    assert route is not None
    return route.target.options.per_request


async def test_a_rate_limited_web_service_is_admitted_per_request() -> None:
    config = ServerConfig(token=Secret("t"), http=HttpFront("example.com", "0.0.0.0", 80))
    limiters = {"app": VisitorLimiter("app", RateLimit(1, burst=2))}
    web = WebFront(
        config, Registry(), lambda _: ServiceTraffic(), lambda _: ServiceLimiter(),
        limiters.get,
    )  # fmt: skip
    web.http_port = 80
    for name in ("app", "free"):
        service = ActiveService(name, "http", 80, 1, Visitors())
        web.register(Register(name, "http", 0, bytes(32)), service, _Session())  # type: ignore[arg-type]
    assert per_request(web, "app") and not per_request(web, "free")
    visitor = Visitor("192.0.2.1", 5000)
    route = web.engine.http_routes.lookup("app.example.com", "/")
    assert route is not None
    opened = [await web.open(route.target, visitor) for _ in range(2)]
    with pytest.raises(UpstreamRefused) as refused:
        await web.open(route.target, visitor)
    assert refused.value.retry_after == "1"
    for stream in opened:  # closing a request's stream releases its admission
        await stream.aclose()
    assert limiters["app"].snapshot().refused == {"service_rate": 1}
    # A reload drops the limits: the service's routes reuse upstreams again; and back.
    limiters.clear()
    assert web.apply(config, None) == []
    assert not per_request(web, "app")
    limiters["free"] = VisitorLimiter("free", RateLimit(5))
    web.apply(dataclasses.replace(config), None)
    assert per_request(web, "free")
