"""The fast path of a visitor connection: plain requests forwarded without h11.

`HttpConnection` runs `FastPath.cycle` while `Heads` still owns the visitor's bytes. A head
the fast parser accepts (`_wire.parse_request_head`), whose route is found and whose
credentials (if the route asks for them) match, is rewritten (`headers.request_headers`, as
h11's path does) and sent in one piece with its body (a Content-Length one, whole in the
buffer: `FAST_BODY_BYTES`); `FastExchange` relays the response. Anything else
(a refusal, a body, an upgrade, a malformed head) goes to h11 and `HttpConnection._handle`,
which answer it exactly as before; answers of the proxy's own (502, 504, 429) are written by
h11 too (`Heads.sync_h11`).

Measured with `bench/http_cost.py` (wrk -c16 keep-alive through listen + up, nginx behind,
medians of 3 runs alternating with the h11-only proxy, load ~2): listen's CPU per request
~217 -> ~69 us, up's ~26 -> ~20 us. A `--tcp` service costs listen ~18 us: its bytes are
relayed by callbacks (`muxtunnel.relay`). So once a connection keeps an upstream, its plain
requests go by callbacks as well (`_relay.CallbackPath`, with `route` and `build` from here):
listen's CPU per request ~91 -> ~58 us (`bench/PROFILES.md`); `cycle` runs the requests the
callbacks hand back (a new upstream, a retry) and the first of each connection.

A keep-alive client often sends the very same head again (a load generator, a poller, a
health check): `route` and `build` read nothing but the head's bytes, the route table and
what a connection keeps for its life (its config, the visitor's address and scheme), so a
bodiless head equal to the last one built, byte for byte, while the table's `generation`
stayed the same, is routed and rewritten as the last one was (`_Rewrite`): ~51k -> ~3k
instructions per wrk request (callgrind, the callback path's whole request ~149k).

A browser, an API client or a crawler sends the same headers under another request line
each time (`GET /a`, `GET /b?page=2`). A head whose bytes from its first CRLF on are the last
one's, with the same method and a request line the fast parser accepts (`_wire.retarget`),
is the last request's headers under another target: every check of them held already. Its
route is the last one's while its path (before `?`/`#`) and the table's generation are;
else it is looked up (and its credentials checked) as any. Under the same `Route` object its
bytes for the service are its request line and the last rewritten header block:
`request_headers` reads the headers, the Host, what the connection keeps for its life and the
route's rules (Host rewrite, headers set and removed, credentials), never the target, and a
`Route` does not change once made (the table replaces it). Callgrind, the callback path's
whole request: ~92k -> ~55k instructions when only the query changes.
"""

from __future__ import annotations

from typing import Protocol

from muxtunnel.vhost._deadline import Deadline
from muxtunnel.vhost._engine_view import EngineView
from muxtunnel.vhost._exchange import ExchangeFailure, UpstreamBroken, VisitorSide
from muxtunnel.vhost._fast import FastExchange
from muxtunnel.vhost._heads import Heads
from muxtunnel.vhost._slot import UpstreamSlot
from muxtunnel.vhost._wire import FastRequest, parse_request_head, retarget
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.headers import ForwardedFor, basic_auth_ok, request_headers
from muxtunnel.vhost.names import InvalidHostError, normalise_host
from muxtunnel.vhost.routes import Route, RouteTable, routing_path
from muxtunnel.vhost.streams import linger_close

__all__ = ["FAST_BODY_BYTES", "REMEMBER_HEAD_BYTES", "ConnectionView", "FastPath", "InFlight"]

#: A body with a Content-Length up to this size, all of it already read with its head, rides
#: the fast path with the head in one write; a longer one, or one still coming, goes to h11,
#: which streams it (a small POST's body nearly always comes in the head's segment).
FAST_BODY_BYTES = 64 * 1024
#: A request head up to this size is remembered for the next (`_Rewrite`): what a client
#: repeats is a small head (wrk's is ~60 bytes, a browser's 0.5-2 KiB), and a connection
#: that keeps a head between requests must not keep a large one (a head may be 32 KiB).
REMEMBER_HEAD_BYTES = 4 * 1024


class InFlight(Protocol):
    """What the connection reads of the exchange in flight (`Exchange`, `FastExchange`, or
    `_relay.CallbackPath`) when it fails or a deadline passes in it."""

    @property
    def response_started(self) -> bool: ...

    @property
    def response_timeout_s(self) -> float: ...


class ConnectionView(Protocol):
    """What the fast path uses of its `HttpConnection`."""

    engine: EngineView
    config: VhostConfig
    side: VisitorSide
    slot: UpstreamSlot
    heads: Heads
    deadline: Deadline
    forwarded: ForwardedFor
    proto: bytes
    #: Another node of our cluster set the forwarded headers (`Visitor.relayed`).
    relayed: bool
    current: tuple[Route, InFlight] | None

    async def fast_failed(
        self, failure: ExchangeFailure, exchange: InFlight | None, route: Route
    ) -> bool: ...


#: The last bodiless request `build` made: its head (without its blank line, as `route` gets
#: it), the route table and its generation then, what `route` found (the request, its route
#: and Host), its bytes for the service, its response timeout, its header block as received
#: and as rewritten (each from the CRLF that ends the request line). A tuple: a class's
#: `__init__` cost ~2k instructions per request that repeats nothing.
_Rewrite = tuple[
    bytes, RouteTable, int, tuple[FastRequest, Route, bytes], bytes, float, bytes, bytes
]


class FastPath:
    """Forwards the plain requests of one visitor connection."""

    __slots__ = ("_host", "_last", "conn")

    def __init__(self, conn: ConnectionView) -> None:
        self.conn = conn
        #: The last Host header and its normalised name (a keep-alive visitor repeats it).
        self._host: tuple[bytes, str] = (b"", "")
        #: The last bodiless request built, for a head that repeats it (see the module doc).
        self._last: _Rewrite | None = None

    async def cycle(self, first: bool) -> bool | None:
        """One plain bodiless request without h11 (`_fast`): True if the connection goes
        on, False if it ended, None if h11 holds the request now (and every later one)."""
        conn = self.conn
        heads = conn.heads
        end = await heads.read_fast(first)
        if end is None:
            return None
        if end < 0:
            return False
        assert heads.buffer is not None
        found = self.route(heads.buffer[:end])
        if found is None:
            heads.to_h11()
            return None
        request, route, host = found
        data, timeout_s = self.build(request, route, host)
        options = route.target.options
        retried = False
        while True:
            try:
                conn.deadline.clear()  # opening is bounded by its own timeout
                up = await conn.slot.acquire(route, request.headers)
            except ExchangeFailure as exc:
                return await conn.fast_failed(exc, None, route)
            exchange = FastExchange(
                conn.side, up, route, data, head_only=request.method == b"HEAD",
                visitor_close=request.close, response_timeout_s=timeout_s,
                max_head_bytes=conn.config.max_response_header_bytes,
            )  # fmt: skip
            conn.current = (route, exchange)
            await exchange.run()
            conn.current = None
            failure = exchange.failure
            if (
                isinstance(failure, UpstreamBroken)
                and up.reused
                and not retried
                and exchange.received_bytes == 0
            ):
                retried = True  # the service closed its idle keep-alive stream just now
                await conn.slot.drop(abortive=True)
                continue
            break
        if failure is not None:
            return await conn.fast_failed(failure, exchange, route)
        heads.done()
        if not exchange.keep_upstream or options.per_request:
            await conn.slot.drop(abortive=False)
        if not request.close:
            return True
        conn.deadline.clear()  # lingering is bounded by its own timeout
        await linger_close(
            conn.side.stream, timeout_s=conn.config.linger_s, max_bytes=conn.config.linger_bytes
        )
        return False

    def build(self, request: FastRequest, route: Route, host: bytes) -> tuple[bytes, float]:
        """Take the request out of the buffer: its bytes for the service (head rewritten, as
        h11's path does, and its body) and its response timeout."""
        conn = self.conn
        last = self._last
        if last is not None and request is last[3][0]:  # `route` found it, or made it
            conn.heads.take(request.size)
            return last[4], last[5]
        taken = conn.heads.take(request.size + request.length)
        headers = request_headers(
            request.headers, visitor=conn.forwarded, proto=conn.proto, host=host,
            host_rewrite=route.host_rewrite, remove=route.remove_headers,
            set_headers=route.set_headers, strip_authorization=route.auth_credentials is not None,
            connection=request.connection_tokens, relayed=conn.relayed,
        )  # fmt: skip
        # Joined in C (`map` of bytes.join over the pairs): a format per line cost ~2 us.
        data = b"%b %b HTTP/1.1\r\n%b\r\n\r\n%b" % (
            request.method, request.target, b"\r\n".join(map(b": ".join, headers)),
            taken[request.size :],
        )  # fmt: skip
        timeout_s = route.target.options.response_timeout_s or conn.config.response_timeout_s
        if not request.length and request.size <= REMEMBER_HEAD_BYTES:
            # `route` ran just before, on the table as it is now
            routes = conn.engine.http_routes
            line = len(request.method) + len(request.target) + 10  # the CRLF after the line
            self._last = (taken[:-4], routes, routes.generation, (request, route, host), data,
                          timeout_s, taken[line:-4], data[line:])  # fmt: skip
        return data, timeout_s

    def route(self, head: bytes) -> tuple[FastRequest, Route, bytes] | None:
        """The request and its route when the fast path can forward it as it is; None when
        h11 and `_handle` must judge it (any refusal, a body, an upgrade...)."""
        last = self._last
        if last is not None:
            if head == last[0]:
                routes = self.conn.engine.http_routes
                if routes is last[1] and routes.generation == last[2]:
                    return last[3]
            elif head.endswith(last[6]):  # the last header block: maybe another request line
                line_end = len(head) - len(last[6])
                request = retarget(last[3][0], head, line_end)
                if request is not None:  # every check of its headers held for the last one
                    if request.size > self.conn.config.max_header_bytes:
                        return None
                    routes = self.conn.engine.http_routes
                    found = (
                        (request, last[3][1], request.host)  # the same lookup: its credentials held
                        if request.path == last[3][0].path
                        and routes is last[1]
                        and routes.generation == last[2]
                        else self._find(request)
                    )
                    if found is None or found[1] is not last[3][1]:
                        return found  # `build` rewrites it for its route
                    if request.size <= REMEMBER_HEAD_BYTES:
                        # The same headers under the same route: the same rewrite (the
                        # module doc), after the visitor's request line (as `build` writes
                        # it); `build` finds it made, as for a repeated head.
                        data = head[:line_end] + last[7]
                        self._last = (head, routes, routes.generation, found, data, last[5],
                                      last[6], last[7])  # fmt: skip
                    return found
        request = parse_request_head(head)
        config = self.conn.config
        if (
            request is None
            or request.length > FAST_BODY_BYTES
            or len(self.conn.heads.buffer or b"") < request.size + request.length
            or request.method == b"CONNECT"
            or len(request.headers) > config.max_header_count
            or request.size > config.max_header_bytes
        ):
            return None
        return self._find(request)

    def _find(self, request: FastRequest) -> tuple[FastRequest, Route, bytes] | None:
        """The route of a request the fast parser took, if its credentials hold."""
        host = request.host
        if host == self._host[0]:
            name = self._host[1]
        else:
            try:
                name = normalise_host(host)
            except InvalidHostError:
                return None
            self._host = (host, name)
        path = request.path.decode("latin-1")
        route = self.conn.engine.http_routes.lookup(name, routing_path(path))
        if route is None:
            return None
        if route.auth_credentials is not None:
            if not basic_auth_ok(request.authorization, route.auth_credentials):
                return None
        return request, route, host
