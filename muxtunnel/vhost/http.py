"""The HTTP/1.1 reverse proxy for one visitor connection: route each request, forward it.

Theory of operation (one `HttpConnection` per visitor connection, one task):
0. Plain requests (most keep-alive traffic) take the fast path (`_fastpath`), without h11,
   until the first request it does not take; h11 reads every head from then on (`_heads`).
   Once the connection keeps an upstream mux stream, the task lends the socket and the stream
   to callbacks (`_relay`) and waits until a request needs it again.
1. Read a request head within its deadline: `head_timeout_s` from the first byte (or from the
   accept, for the first request), after at most `idle_timeout_s` of keep-alive idleness.
   Caps: `max_header_bytes` (h11 refuses beyond it: 431) and `max_header_count` (431).
2. Route it by Host (or the authority of an absolute-form target) and path: unknown -> 404
   naming the host; then Expect (417 unless 100-continue) and basic auth (401).
3. Reuse the upstream connection when the route's target is the one it serves and both sides
   kept it alive, else open a new one through `Upstream` (502 / 504 when that fails). While
   the visitor is idle between requests (past `_WATCH_AFTER_S`) the kept upstream is watched:
   a service that closes its idle keep-alive connection is noticed then, not by the next
   request. A reused stream that fails before answering a bodiless request is retried once.
4. Run the `Exchange`; on 101 both sides become a raw byte pipe (`proxy.pipe`) with what h11
   had buffered replayed first.
5. Errors the proxy answers itself close the connection unless the request was read whole;
   a failure after the response started resets the visitor (it must not take a truncated
   body for a whole one) and the service's stream likewise.

Timeouts of this task's waits (idle, head, sends, the response clock) share one lazy
`Deadline`: when one passes, the connection's scope is cancelled and `_expired` answers for it
(408, 504, or a reset). The request-body task of an `Exchange` bounds its waits by scopes.
"""

from __future__ import annotations

import anyio
import anyio.abc
import h11
import structlog

from muxtunnel.proxy import pipe
from muxtunnel.transport import abort
from muxtunnel.vhost._deadline import Deadline
from muxtunnel.vhost._engine_view import EngineView
from muxtunnel.vhost._exchange import (
    IO_ERRORS,
    Exchange,
    ExchangeFailure,
    UpstreamBroken,
    UpstreamConnection,
    UpstreamSlow,
    VisitorGone,
    VisitorSide,
)
from muxtunnel.vhost._fastpath import FastPath, InFlight
from muxtunnel.vhost._heads import Heads
from muxtunnel.vhost._relay import CallbackPath, lend, raw_stream
from muxtunnel.vhost._request import (
    CLOSING_STATUSES,
    Refusal,
    RequestHead,
    cycle_done,
    host_and_path,
    refusal_for,
)
from muxtunnel.vhost._slot import UpstreamSlot
from muxtunnel.vhost.headers import ForwardedFor, basic_auth_ok, request_headers
from muxtunnel.vhost.limits import log_doubling
from muxtunnel.vhost.names import InvalidHostError, normalise_host
from muxtunnel.vhost.pages import error_response
from muxtunnel.vhost.routes import Route, routing_path
from muxtunnel.vhost.streams import CountingStream, PrefixedStream, linger_close
from muxtunnel.vhost.upstream import Visitor

__all__ = ["HttpConnection"]

log = structlog.get_logger("muxtunnel.vhost")


class HttpConnection:
    """Serves one visitor connection until it ends; `run` never raises for I/O trouble."""

    def __init__(self, engine: EngineView, stream: anyio.abc.ByteStream, visitor: Visitor) -> None:
        self.engine = engine
        self.config = engine.config
        self.visitor = visitor
        self.side = VisitorSide(stream, engine.config)
        self.forwarded = ForwardedFor(visitor.host, visitor.port)
        self.proto = visitor.scheme.encode()
        self.relayed = visitor.relayed
        self.slot = UpstreamSlot(engine.upstream, visitor, engine.config)
        self.deadline: Deadline
        self._aborted = False
        self.heads: Heads
        self.fast = FastPath(self)
        #: The route and exchange in flight, for answering a deadline that expired in it.
        self.current: tuple[Route, InFlight] | None = None
        #: The callback path, once the visitor's socket was taken over from anyio (None: not
        #: yet; `_lendable` False: it cannot be, e.g. a TLS stream).
        self.callbacks: CallbackPath | None = None
        self._lendable = True

    async def run(self) -> None:
        scope = anyio.CancelScope()
        self.deadline = deadline = Deadline(scope)
        self.side.deadline = deadline
        self.heads = Heads(self.side, self.slot, deadline)
        try:
            with scope:
                try:
                    await self._serve()
                except VisitorGone:
                    self._aborted = True
            if deadline.expired is not None:
                deadline.close()
                self.side.deadline = None  # answers from here on carry scopes of their own
                try:
                    with anyio.move_on_after(self.config.send_timeout_s):
                        await self._expired(deadline.expired)
                except VisitorGone:
                    self._aborted = True
        finally:
            deadline.close()
            with anyio.CancelScope(shield=True):
                await self.slot.drop(abortive=self._aborted)
                if self._aborted:
                    await abort(self.side.stream)
                else:
                    try:
                        await self.side.stream.aclose()
                    except IO_ERRORS:
                        pass

    async def _serve(self) -> None:
        heads = self.heads
        first = True
        while True:
            if heads.buffer is not None:
                if not first and (callbacks := self._callbacks()) is not None:
                    if not await callbacks.run():
                        return  # else the task takes the request the callbacks did not
                go = await self.fast.cycle(first)
                if go is False:
                    return
                if go:
                    first = False
                    continue
            request = await heads.read_h11(first)
            if request is None:
                return
            if isinstance(request, Refusal):
                await self._refuse(request, None)
                return
            if not await self._handle(request):
                return
            self.side.conn.start_next_cycle()
            first = False

    def _callbacks(self) -> CallbackPath | None:
        """The callback path, if it can take the next requests (a kept upstream it drives)."""
        up = self.slot.current
        if up is None or up.dead or raw_stream(up) is None or not self._lendable:
            return None
        if self.callbacks is None:
            self.callbacks = lend(self, self.fast)
            self._lendable = self.callbacks is not None
        return self.callbacks

    async def fast_failed(
        self, failure: ExchangeFailure, exchange: InFlight | None, route: Route
    ) -> bool:
        keep = await self._failed(failure, exchange, route)
        if keep:
            self.side.conn.start_next_cycle()  # h11 answered it (`sync_h11`), the next is ours
        return keep

    async def _expired(self, what: str) -> None:
        """Answer for the wait that outlived the connection's deadline (`Deadline.expired`)."""
        if what == "idle":
            return  # a keep-alive connection nobody used: close it quietly
        if what == "head":
            count = self.engine.counters.refuse("head_timeout")
            log_doubling("request head too slow: connection closed", count,
                         visitor=self.visitor.host, received_bytes=self.heads.received)  # fmt: skip
            if self.heads.received:
                refusal = Refusal(408, "head_timeout", "The request took too long.")
                await self._refuse(refusal, None, count=False)
            return
        current = self.current
        if what in ("response", "send_up") and current is not None:
            route, exchange = current
            timeout_s = exchange.response_timeout_s if what == "response" else None
            reason = (
                f"the service did not respond within {timeout_s:g} s"
                if timeout_s is not None
                else "the service stopped reading the request"
            )
            try:
                await self._failed(UpstreamSlow(reason), exchange, route)
            except VisitorGone:
                self._aborted = True
            return
        self._aborted = True  # the visitor stopped reading: it must see a failure

    # ------------------------------------------------------------------ one request

    async def _handle(self, request: h11.Request) -> bool:
        """Answer one request; True when the connection may carry another."""
        route: Route | None = None
        head = RequestHead(request)
        try:
            if head.count > self.config.max_header_count:
                raise Refusal(431, "headers_too_large", "Too many header fields.")
            if head.size > self.config.max_header_bytes:
                # h11 caps only heads still incomplete; one that arrived whole is measured here.
                raise Refusal(431, "headers_too_large", "The request head is too large.")
            if request.method == b"CONNECT":
                raise Refusal(405, "method_not_allowed", "This is not a forward proxy.")
            host, path, target = host_and_path(request, head.hosts)
            try:
                name = normalise_host(host)
            except InvalidHostError as exc:
                raise Refusal(400, "bad_request", f"Invalid Host header: {exc}") from None
            routes = self.engine.http_routes
            route = routes.lookup(name, routing_path(path))
            if route is None:
                where = f"{name}{path[:200]}" if routes.has_host(name) else name
                raise Refusal(404, "unknown_host", f"No service is registered for {where}.")
            if head.expect and head.expect != [b"100-continue"]:
                raise Refusal(
                    417, "expectation_failed", "Only 'Expect: 100-continue' is supported."
                )
            if route.auth_credentials is not None:
                if not basic_auth_ok(head.authorization, route.auth_credentials):
                    raise Refusal(
                        401, "unauthorized", "This service needs a user name and password."
                    )
        except Refusal as refusal:
            return await self._refuse(refusal, route)
        return await self._forward(request, head, route, host, target)

    async def _forward(
        self, request: h11.Request, head: RequestHead, route: Route, host: bytes, target: bytes
    ) -> bool:
        conn = self.side.conn
        request_complete = False
        if not head.has_body:
            event = conn.next_event()  # a bodiless request's end is already parsed: no I/O
            request_complete = type(event) is h11.EndOfMessage
        upstream_request = h11.Request(
            method=request.method,
            target=target,
            headers=request_headers(
                head.raw,
                visitor=self.forwarded,
                proto=self.proto,
                host=host,
                host_rewrite=route.host_rewrite,
                remove=route.remove_headers,
                set_headers=route.set_headers,
                strip_authorization=route.auth_credentials is not None,
                upgrade=head.upgrade,
                chunked=head.chunked,
                connection=head.connection_tokens,
                relayed=self.relayed,
            ),
            # Every name and value came through h11's parser or a checked config (`routes`),
            # so h11's per-header regexes need not run again: ~6 % of a request's CPU.
            _parsed=True,
        )
        timeout_s = route.target.options.response_timeout_s or self.config.response_timeout_s
        retried = False
        while True:
            try:
                self.deadline.clear()  # opening is bounded by its own timeout
                up = await self.slot.acquire(route, head.raw)
                if conn.they_are_waiting_for_100_continue:
                    continue_100 = h11.InformationalResponse(
                        status_code=100, headers=[], reason=b"Continue"
                    )
                    await self.side.send(conn.send(continue_100))
            except ExchangeFailure as exc:
                return await self._failed(exc, None, route)
            exchange = Exchange(
                self.side, up, route, upstream_request,
                request_complete=request_complete, chunked=head.chunked,
                response_timeout_s=timeout_s,
            )  # fmt: skip
            self.current = (route, exchange)
            await exchange.run()
            self.current = None
            failure = exchange.failure
            if (
                isinstance(failure, UpstreamBroken)
                and up.reused
                and not retried
                and exchange.received_bytes == 0
                and request_complete
                and exchange.request_complete
            ):
                retried = True  # the service closed its idle keep-alive stream just now
                await self.slot.drop(abortive=True)
                continue
            break
        if failure is not None:
            return await self._failed(failure, exchange, route)
        if exchange.switched:
            await self._tunnel(up, route)
            return False
        if up.reusable and not route.target.options.per_request:
            up.conn.start_next_cycle()
        else:
            await self.slot.drop(abortive=False)
        if cycle_done(conn):
            return True
        self.deadline.clear()  # lingering is bounded by its own timeout
        await linger_close(
            self.side.stream, timeout_s=self.config.linger_s, max_bytes=self.config.linger_bytes
        )
        return False

    async def _tunnel(self, up: UpstreamConnection, route: Route) -> None:
        self.deadline.clear()  # a raw pipe lasts as long as its peers like
        self.slot.take()  # pipe owns (and closes) both streams from here
        visitor_bytes, visitor_closed = self.side.conn.trailing_data
        up_bytes, up_closed = up.conn.trailing_data
        await pipe(
            CountingStream(self.side.stream, bytes(visitor_bytes), visitor_closed, route.counters),
            PrefixedStream(up.stream, bytes(up_bytes), up_closed),
        )

    # ------------------------------------------------------------------ answers of our own

    async def _failed(
        self,
        failure: ExchangeFailure,
        exchange: InFlight | None,
        route: Route,
    ) -> bool:
        self.heads.sync_h11()  # a fast request's answer comes from h11 as any other
        await self.slot.drop(abortive=True)
        if isinstance(failure, VisitorGone) or (exchange is not None and exchange.response_started):
            self._aborted = True  # the visitor must see a failure, not a clean end
            raise VisitorGone(str(failure))
        refusal = refusal_for(failure)
        count = route.counters.refuse(refusal.reason)
        log_doubling("request failed", count, service=route.target.service,
                     status=refusal.status, error=str(failure))  # fmt: skip
        return await self._refuse(refusal, route, count=False)

    async def _refuse(self, refusal: Refusal, route: Route | None, *, count: bool = True) -> bool:
        """Answer with an error page; True if the connection can go on."""
        conn = self.side.conn
        if count:
            if route is not None:
                route.counters.refuse(refusal.reason)
            else:
                total = self.engine.counters.refuse(refusal.reason)
                log_doubling("request refused", total, reason=refusal.reason, status=refusal.status,
                             visitor=self.visitor.host)  # fmt: skip
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._aborted = True
            return False
        # A request that broke the protocol (or took too long) ends the connection whatever
        # is left of it; the others keep a connection whose request was read whole.
        keep = refusal.status not in CLOSING_STATUSES and self._request_read_whole()
        extra = refusal.headers
        if refusal.status == 401 and route and route.auth_challenge:
            extra = [*extra, (b"WWW-Authenticate", route.auth_challenge)]
        response, body = error_response(
            refusal.status, refusal.detail, close=not keep, extra_headers=extra
        )
        if route is not None:
            route.counters.count_response(refusal.status)
        try:
            data = (
                conn.send(response) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            )
        except h11.LocalProtocolError:
            self._aborted = True
            return False
        await self.side.send(data)
        if keep and cycle_done(conn):
            return True
        self.deadline.clear()  # lingering is bounded by its own timeout
        await linger_close(
            self.side.stream, timeout_s=self.config.linger_s, max_bytes=self.config.linger_bytes
        )
        return False

    def _request_read_whole(self) -> bool:
        """Has the visitor's request ended (so the connection can carry another)?"""
        conn = self.side.conn
        if conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            return type(event) is h11.EndOfMessage
        return conn.their_state is h11.DONE
