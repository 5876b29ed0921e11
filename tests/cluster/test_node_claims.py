"""A node's claims in one process: two `ClusterNode`s on one memory store, the answers a
registration gets (a single server's messages), and a registry that cannot be reached."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest
import structlog

from muxtunnel import control
from muxtunnel.cluster import LeaseKeeper, MemoryStore, RegistryUnavailable
from muxtunnel.control import Register
from muxtunnel.log import Refusals
from muxtunnel.model import ClusterConfig, HttpFront, Secret, ServerConfig
from muxtunnel.server._cluster import ClusterNode
from muxtunnel.server._private import PrivateBook
from muxtunnel.server._registry import RegistrationError

pytestmark = pytest.mark.anyio

CONFIG = ServerConfig(
    bind_host="127.0.0.1",
    bind_port=7835,
    token=Secret("token-0123456789abcdef"),
    http=HttpFront(domain="example.test"),
)


def node(node_id: str, store: object) -> ClusterNode:
    """A node of a stub server (config and refusals are all claims use) on `store`."""
    server = SimpleNamespace(config=CONFIG, refusals=Refusals(structlog.get_logger()), web=None,
                             private=PrivateBook(CONFIG))  # fmt: skip
    cluster = ClusterConfig(url="memory://", node_id=node_id, advertise=f"10.0.0.1:{7836}")
    found = ClusterNode(server, cluster)  # type: ignore[arg-type]
    found.store = store  # type: ignore[assignment]
    found.keeper = LeaseKeeper(store, lease_s=10.0)  # type: ignore[arg-type]
    return found


def register(name: str, type: str = "tcp", port: int = 0, **extra: object) -> Register:
    return Register(name, type, port, b"t" * 32, **extra)  # type: ignore[arg-type]


async def refused(owner: ClusterNode, request: Register) -> RegistrationError:
    with pytest.raises(RegistrationError) as info:
        await owner.claim(request, 2, owner.keys_for(request))
    return info.value


async def test_one_name_space_with_a_single_servers_answers() -> None:
    store = MemoryStore()
    a, b = node("a", store), node("b", store)
    web = register("web", port=9000)
    held = await a.claim(web, 1, a.keys_for(web))
    assert [str(lease.key) for lease in held] == ["service:web", "tcp:9000"]

    taken = await refused(b, register("web"))
    assert (taken.code, taken.message) == (
        control.SERVICE_TAKEN,
        "service 'web' is already served by another client",
    )
    port = await refused(b, register("other", port=9000))
    assert (port.code, port.message) == (control.PORT_IN_USE, "tcp port 9000 is already in use")
    other = await store.lookup(b.keys_for(register("other", port=9000)))
    assert [str(key) for key in other] == ["tcp:9000"]  # all or nothing: no "service:other"

    site = register("site", "http", 0, custom_domains=())
    await a.claim(site, 1, a.keys_for(site))
    assert [str(k) for k in a.keys_for(site)] == ["service:site", "http:site.example.test/"]
    host = await refused(b, register("site2", "http", 0, subdomain="site"))
    assert (host.code, host.message) == (
        control.DOMAIN_TAKEN,
        "site.example.test is already served by another client",
    )

    await a.release(held)
    again = await b.claim(register("web"), 2, b.keys_for(register("web")))
    assert [str(lease.key) for lease in again] == ["service:web"]


async def test_group_members_on_two_nodes_share_the_name_and_its_port() -> None:
    store = MemoryStore()
    a, b = node("a", store), node("b", store)
    one = register("one", port=9100, group="shop", instance=b"i" * 16)
    two = register("two", port=9100, group="shop", instance=b"j" * 16)
    await a.claim(one, 1, a.keys_for(one))
    await b.claim(two, 1, b.keys_for(two))
    plain = await refused(b, register("shop"))
    assert plain.code == control.SERVICE_TAKEN
    holdings = dict(await store.holdings())
    assert {str(k): sorted(h.node_ids) for k, h in holdings.items()} == {
        "service:shop": ["a", "b"], "tcp:9100": ["a", "b"],
    }  # fmt: skip


class Unreachable(MemoryStore):
    async def acquire(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise RegistryUnavailable("cannot reach redis://10.0.0.5:6379/0: Connection refused")


async def test_an_unreachable_registry_refuses_registrations_and_counts_them() -> None:
    a = node("a", Unreachable())
    for _ in range(3):
        with anyio.fail_after(5):
            error = await refused(a, register("web"))
        assert error.code == control.REGISTRY_UNAVAILABLE
        assert "registry is unreachable" in error.message and "try again" in error.message
    assert a.server.refusals["registry_unavailable"] == 3
