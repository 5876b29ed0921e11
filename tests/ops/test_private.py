"""Private services in process: `visit` with TLS, a pinned certificate and compression on both
hops; a raw visitor that breaks the rules; who may visit what (`PrivateBook`).

The real processes (exit codes, printed lines, ssh) are in `tests/e2e/test_private*.py`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from mux import MuxConfig, MuxStream, Session
from muxtunnel import control
from muxtunnel.auth import new_nonce
from muxtunnel.client import Visitor
from muxtunnel.control import (
    Challenge,
    Error,
    Hello,
    Presence,
    Register,
    Visit,
    Visited,
    VisitorHeader,
)
from muxtunnel.model import (
    ClientConfig,
    ClientTls,
    Secret,
    ServerConfig,
    ServerTls,
    ServicePolicy,
    VisitSpec,
)
from muxtunnel.server._private import Grant, PrivateBook
from muxtunnel.visitauth import visit_tag, visitor_key

from .helpers import (
    TOKEN,
    WAIT_S,
    Pair,
    client_config,
    digest,
    echo_service,
    echo_through,
    running_client,
    running_server,
    server_config,
    tcp,
    wait_until,
)

pytestmark = pytest.mark.anyio

VISITOR = Secret("visitor-token-0123456789")


@asynccontextmanager
async def running_visitor(config: ClientConfig) -> AsyncIterator[Visitor]:
    visitor = Visitor(config)
    async with anyio.create_task_group() as tg:
        await tg.start(visitor.run)
        await wait_until(lambda: all(s.granted for s in visitor.visits.values()))
        try:
            yield visitor
        finally:
            tg.cancel_scope.cancel()


def visitor_config(port: int, *visits: VisitSpec, **changes: object) -> ClientConfig:
    base: dict[str, object] = {
        "server_host": "127.0.0.1", "server_port": port, "token": VISITOR, "visits": visits,
        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
    }  # fmt: skip
    base.update(changes)
    return ClientConfig(**base)  # type: ignore[arg-type]


def bound_port(visitor: Visitor, name: str) -> int:
    bound = visitor.visits[name].bound
    assert bound is not None
    return int(bound.rsplit(":", 1)[1])


async def test_visit_with_tls_a_pinned_certificate_and_compression_on_both_hops(
    certs: dict[str, Pair],
) -> None:
    pair = certs["server"]
    tls = ServerTls(pair.cert, pair.key)
    pinned = ClientTls(fingerprints=(pair.fingerprint.removeprefix("sha256:"),))
    async with echo_service() as echo, running_server(server_config(tls=tls)) as server:
        assert server.port is not None
        spec = tcp("db", echo, private=True, visitor_tokens=(VISITOR,), compression="zstd")
        async with running_client(client_config(server.port, spec, tls=pinned)):
            visit = VisitSpec("db", "tcp", compression="zstd")
            async with (
                counting_proxy(server.port) as (proxy, wire),
                running_visitor(visitor_config(proxy, visit, tls=pinned)) as visitor,
            ):
                state = visitor.visits["db"]
                assert (state.compression, state.online) == ("zstd", True)
                text = b"the same line again and again\n" * 40_000
                before = wire[0]
                assert digest(await echo_through(bound_port(visitor, "db"), text)) == digest(text)
                (service,) = server.status().services
                assert service.private and service.public == "private"
                assert service.compression == "zstd" and service.bytes_in == len(text)
                (row,) = visitor.status().services
                assert row.bytes_in == len(text) and row.provider_online is True
                # The visitor's hop is compressed too: its carrier (TLS) carried a fraction.
                assert wire[0] - before < len(text) // 20, wire


@asynccontextmanager
async def counting_proxy(port: int) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP relay to 127.0.0.1:`port`; yields its port and [bytes up, bytes down] so far."""
    counts = [0, 0]

    async def relay(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", port) as upstream:

            async def copy(a: anyio.abc.SocketStream, b: anyio.abc.SocketStream, i: int) -> None:
                try:
                    async for chunk in a:
                        counts[i] += len(chunk)
                        await b.send(chunk)
                except (anyio.BrokenResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(copy, client, upstream, 0)
                tg.start_soon(copy, upstream, client, 1)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, relay)
        try:
            yield listener.extra(anyio.abc.SocketAttribute.local_port), counts
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def raw_visitor(port: int) -> AsyncIterator[tuple[Session, MuxStream, tuple[bytes, bytes]]]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with Session(stream, client=True, config=MuxConfig(enable_keepalive=False)) as session:
        channel = await session.open_stream()
        client_nonce = new_nonce()
        await control.send_message(channel, Hello(control.PROTOCOL_VERSION, client_nonce, "raw"))
        challenge = await control.receive_message(channel)
        assert isinstance(challenge, Challenge)
        yield session, channel, (challenge.server_nonce, client_nonce)


async def _reset(stream: MuxStream) -> bool:
    with anyio.fail_after(WAIT_S):
        try:
            await stream.receive()
        except anyio.BrokenResourceError:
            return stream.is_reset
    return False


async def test_a_raw_visitor_gets_nothing_it_was_not_granted() -> None:
    async with echo_service() as echo, running_server(server_config()) as server:
        assert server.port is not None
        a = tcp("a", echo, private=True, visitor_tokens=(VISITOR,))
        b = tcp("b", echo, private=True, visitor_tokens=(Secret("other-visitor-0123456"),))
        web = tcp("web", echo)
        async with running_client(client_config(server.port, a, b, web)):
            async with raw_visitor(server.port) as (session, channel, nonces):
                early = await session.open_stream(b"before any visit")
                assert await _reset(early)  # refused: the session has proven nothing yet
                key = visitor_key(VISITOR)
                tag = visit_tag(key, "a", "tcp", *nonces)
                await control.send_message(channel, Visit("a", "tcp", tag))
                granted = await control.receive_message(channel)
                assert isinstance(granted, Visited) and granted.online
                for header in [
                    VisitorHeader("b", "tcp", "127.0.0.1", 1),  # not granted
                    VisitorHeader("web", "tcp", "127.0.0.1", 1),  # public: not visitable
                    VisitorHeader("a", "udp", "127.0.0.1", 1),  # granted as tcp
                ]:
                    stream = await session.open_stream(control.encode_visitor_header(header))
                    assert await _reset(stream), header
                garbage = await session.open_stream(b"\x00\x05hello")
                assert await _reset(garbage)
                header = VisitorHeader("a", "tcp", "127.0.0.1", 1)
                good = await session.open_stream(control.encode_visitor_header(header))
                await good.send(b"works")
                assert await good.receive() == b"works"
                refusals = server.status().refusals
                assert refusals["visit_not_granted"] == 3 and refusals["visit_bad_stream"] == 1
                # A visitor token for another service is refused like any wrong token...
                tag_b = visit_tag(key, "b", "tcp", *nonces)
                await control.send_message(channel, Visit("b", "tcp", tag_b))
                refused = await control.receive_message(channel)
                assert isinstance(refused, Error) and refused.code == control.AUTH_FAILED
                # ...and a visitor session registers nothing: it ends.
                await control.send_message(channel, Register("c", "tcp", 0, bytes(32)))
                with anyio.fail_after(WAIT_S):
                    await session.wait_closed()
            assert server.status().refusals["bad_control_message"] == 1


async def test_the_provider_going_and_coming_is_told_to_the_visitor() -> None:
    async with echo_service() as echo, running_server(server_config()) as server:
        assert server.port is not None
        spec = tcp("a", echo, private=True, visitor_tokens=(VISITOR,))
        async with raw_visitor(server.port) as (session, channel, nonces):
            async with running_client(client_config(server.port, spec)):
                tag = visit_tag(visitor_key(VISITOR), "a", "tcp", *nonces)
                await control.send_message(channel, Visit("a", "tcp", tag))
                assert isinstance(await control.receive_message(channel), Visited)
            with anyio.fail_after(WAIT_S):
                assert await control.receive_message(channel) == Presence("a", False)
            header = VisitorHeader("a", "tcp", "127.0.0.1", 1)
            stream = await session.open_stream(control.encode_visitor_header(header))
            assert await _reset(stream)
            assert server.status().refusals["provider_offline"] == 1
            async with running_client(client_config(server.port, spec)):
                with anyio.fail_after(WAIT_S):
                    assert await control.receive_message(channel) == Presence("a", True)
                stream = await session.open_stream(control.encode_visitor_header(header))
                await stream.send(b"back")
                assert await stream.receive() == b"back"


# --- who may visit what ---


def _grant(book: PrivateBook, name: str, key: bytes, revoked: list[str]) -> Grant:
    grant = Grant(name, "tcp", key, 1, lambda online: True, lambda g, why: revoked.append(why))
    book.add(grant)
    return grant


async def test_the_book_lets_in_either_sides_tokens_and_revokes_what_neither_lists() -> None:
    operator, provider = Secret("operator-token-000001"), Secret("provider-token-000001")
    config = ServerConfig(services=(_policy("ssh", operator),), token=TOKEN)
    book = PrivateBook(config)
    book.provider_keys_changed("ssh", frozenset({visitor_key(provider)}))
    assert book.keys("ssh") == {visitor_key(operator), visitor_key(provider)}
    revoked: list[str] = []
    by_operator = _grant(book, "ssh", visitor_key(operator), revoked)
    by_provider = _grant(book, "ssh", visitor_key(provider), revoked)
    book.provider_keys_changed("ssh", frozenset())  # the provider dropped its token
    assert revoked == ["its provider no longer lists its visitor token"]
    book.remove(by_provider)
    assert book.visitor_sessions("ssh") == 1
    book.apply(ServerConfig(token=TOKEN))  # the operator dropped his
    assert revoked[-1] == "the server's config no longer lists its visitor token"
    book.remove(by_operator)
    assert book.grants == {}


async def test_the_book_keeps_a_providers_keys_while_a_visitor_holds_a_grant() -> None:
    book = PrivateBook(ServerConfig(token=TOKEN))
    key = visitor_key(secrets.token_hex(16))
    book.provider_keys_changed("ssh", frozenset({key}))
    grant = _grant(book, "ssh", key, [])
    book.forget(["ssh"])
    assert book.keys("ssh") == {key}
    book.remove(grant)
    book.forget(["ssh"])
    assert book.keys("ssh") == frozenset()


def _policy(name: str, token: Secret) -> ServicePolicy:
    return ServicePolicy(name, visitor_tokens=(token,))


async def test_the_services_limits_apply_to_its_visitors() -> None:
    """The server policy's max_connections holds for visitors through `visit` too (they are
    admitted by the same check as a public port's: `_visitors.refusal`)."""
    policy = ServicePolicy("db", max_connections=2, idle_timeout_s=0.0)
    config = server_config(services=(policy,))
    async with echo_service() as echo, running_server(config) as server:
        assert server.port is not None
        spec = tcp("db", echo, private=True, visitor_tokens=(VISITOR,))
        async with (
            running_client(client_config(server.port, spec)),
            running_visitor(visitor_config(server.port, VisitSpec("db", "tcp"))) as visitor,
        ):
            port = bound_port(visitor, "db")
            held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
            for stream in held:
                await stream.send(b"hold")
                assert await stream.receive() == b"hold"
            async with await anyio.connect_tcp("127.0.0.1", port) as third:
                await third.send(b"no room")
                with anyio.fail_after(WAIT_S), pytest.raises(anyio.BrokenResourceError):
                    await third.receive()  # reset: the service has max_connections open
            assert server.status().refusals["max_connections"] == 1
            for stream in held:
                await stream.aclose()
            await wait_until(lambda: server.registry.by_name["db"].visitors == 0)
            assert await echo_through(port, b"room again") == b"room again"
