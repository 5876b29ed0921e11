"""`server._web.WebFront` without sockets: which names a registration claims, who may hold a
host, the URLs it gets back, and what happens to its names when its session is lost."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from muxtunnel import control
from muxtunnel.control import Register
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.model import HttpFront, HttpsFront, Secret, ServerConfig, ServicePolicy
from muxtunnel.server._registry import ActiveService, RegistrationError, Registry
from muxtunnel.server._web import WebFront
from muxtunnel.vhost import RouteTarget, UpstreamUnavailable, Visitor


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Session:
    closed = False


def front(**http: Any) -> WebFront:
    config = ServerConfig(
        token=Secret("t"),
        http=HttpFront("example.com", "0.0.0.0", 80, **http),
        https=HttpsFront("0.0.0.0", 443),
        services=(ServicePolicy("shop", custom_domains=("*.shop.test",)),),
    )
    web = WebFront(config, Registry(), lambda _: ServiceTraffic(), lambda _: ServiceLimiter())
    web.http_port, web.https_port = 80, 8443
    return web


def register(web: WebFront, name: str, session_id: int, **options: Any) -> ActiveService:
    type_ = options.pop("type", "http")
    service = ActiveService(name, type_, 80, session_id, Visitors())
    web.register(Register(name, type_, 0, bytes(32), **options), service, _Session())  # type: ignore[arg-type]
    return service


def refused(web: WebFront, name: str, session_id: int, **options: Any) -> RegistrationError:
    with pytest.raises(RegistrationError) as info:
        register(web, name, session_id, **options)
    return info.value


@pytest.mark.anyio
async def test_names_urls_and_policy() -> None:
    web = front()
    app = register(web, "app", 1, locations=("/", "/api"))
    assert app.urls == ("http://app.example.com", "http://app.example.com/api")
    secure = register(web, "secure", 1, type="https")
    assert secure.urls == ("https://secure.example.com:8443",)
    shop = register(web, "shop", 2, subdomain="Store", custom_domains=("www.shop.test",))
    assert shop.urls == ("http://store.example.com", "http://www.shop.test")
    # Custom domains: under the domain, or outside the policy, are refused with a reason.
    error = refused(web, "other", 3, custom_domains=("x.example.com",))
    assert error.code == control.DOMAIN_NOT_ALLOWED and "use subdomain" in error.message
    error = refused(web, "other", 3, custom_domains=("www.shop.test",))
    assert error.code == control.DOMAIN_NOT_ALLOWED
    assert refused(web, "other", 3, subdomain="a.b").code == control.BAD_REQUEST
    assert refused(web, "other", 3, locations=("nope",)).code == control.BAD_REQUEST
    with_any = front(custom_domains=("*",))
    assert register(with_any, "x", 1, custom_domains=("anything.test",)).urls[1] == (
        "http://anything.test"
    )


@pytest.mark.anyio
async def test_a_host_belongs_to_one_client_session() -> None:
    web = front()
    register(web, "app", 1)
    register(web, "api", 1, subdomain="app", locations=("/api",))  # same client: may split
    error = refused(web, "admin", 2, subdomain="app", locations=("/admin",))
    assert error.code == control.DOMAIN_TAKEN
    assert "app.example.com is already served by another client" in error.message
    error = refused(web, "dup", 1, subdomain="app")  # same client, same location, other service
    assert error.code == control.DOMAIN_TAKEN


@pytest.mark.anyio
async def test_a_lost_session_keeps_its_names_for_the_grace_then_frees_them() -> None:
    web = front(offline_grace_s=0.2)
    async with anyio.create_task_group() as tg:
        web._tg = tg
        app = register(web, "app", 1)
        app.session_lost = True
        web.release(app)
        # 502 meanwhile (the engine's UpstreamUnavailable), and nobody else gets the name.
        with pytest.raises(UpstreamUnavailable, match="offline"):
            await web.open(RouteTarget("app", "session-1"), Visitor("127.0.0.1", 1))
        assert web.engine.http_routes.lookup("app.example.com") is not None
        assert refused(web, "thief", 2, subdomain="app").code == control.DOMAIN_TAKEN
        # The name itself, registered again (it proved the name's token): taken over at once.
        again = register(web, "app", 3)
        route = web.engine.http_routes.lookup("app.example.com")
        assert route is not None and route.target.owner == "session-3"
        again.session_lost = True
        web.release(again)
        with anyio.fail_after(5):
            while web.engine.http_routes.lookup("app.example.com") is not None:
                await anyio.sleep(0.05)
        register(web, "thief", 2, subdomain="app")  # free after the grace
        # An unregistered service (its session alive) loses its names at once.
        gone = register(web, "gone", 2)
        web.release(gone)
        assert web.engine.http_routes.lookup("gone.example.com") is None
        tg.cancel_scope.cancel()
