"""The inspector's passive HTTP tap: what it records, what it gives up on, and that the stream
it taps passes every byte unchanged whatever the tap makes of them."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.testing.pairs import memory_stream_pair
from muxtunnel.captures import Captures
from muxtunnel.httptap import MAX_WAITING_BYTES, Tap
from muxtunnel.relay import ObservedStream

REQUESTS = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: app\r\n\r\n"
    b'POST /items HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\n{"n": 123}\n'
    b"HEAD /h HTTP/1.1\r\nHost: app\r\n\r\n"
    b"PUT /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
)
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nX-Id: 7\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # HEAD: no body follows
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
)
EXPECTED = [
    ("GET", "/a?x=1", b"", 200, b"hello"),
    ("POST", "/items", b'{"n": 123}\n', 201, b""),
    ("HEAD", "/h", b"", 200, b""),
    ("PUT", "/chunked", b"abcde", 404, b"nope"),
]


def recorded(captures: Captures) -> list[tuple[str, str, bytes, int | None, bytes]]:
    return [
        (e.method, e.target, e.request_body, e.status, e.response_body)
        for e in captures.exchanges()
    ]


def feed_all(captures: Captures, requests: list[bytes], responses: list[bytes]) -> None:
    tap = Tap(captures, "app", "192.0.2.1:4000")
    for chunk in requests:
        tap.feed_request(chunk)
    for chunk in responses:
        tap.feed_response(chunk)
    tap.close()


def test_a_keep_alive_connection_with_pipelined_requests() -> None:
    captures = Captures()
    feed_all(captures, [REQUESTS], [RESPONSES])
    assert recorded(captures) == EXPECTED
    assert captures.abandoned == 0
    first = captures.exchanges()[0]
    assert first.request_headers == (("host", "app"),)
    assert first.duration_s is not None and first.error is None
    assert captures.exchanges()[1].response_headers == (("content-length", "0"), ("x-id", "7"))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=12),
    st.sampled_from([16 * 1024, 3]),
)
def test_any_split_into_chunks_records_the_same(
    req_cuts: list[int], resp_cuts: list[int], cap: int
) -> None:
    """With a cap of 3 bytes the long bodies are cut, and counted without parsing."""
    captures = Captures(body_cap_bytes=cap)
    tap = Tap(captures, "app", "p")
    requests, responses = split(REQUESTS, req_cuts), split(RESPONSES, resp_cuts)
    # Interleaved as a real connection would see them: some requests, then some answers.
    while requests or responses:
        if requests:
            tap.feed_request(requests.pop(0))
        if responses:
            tap.feed_response(responses.pop(0))
    tap.close()
    expected = [(m, t, req[:cap], status, resp[:cap]) for m, t, req, status, resp in EXPECTED]
    assert recorded(captures) == expected
    sizes = [(e.request_bytes, e.response_bytes) for e in captures.exchanges()]
    assert sizes == [(0, 5), (11, 0), (0, 0), (5, 4)]


def test_bodies_are_cut_at_the_cap_but_counted_whole() -> None:
    captures = Captures(body_cap_bytes=10)
    body = b"x" * 100
    head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
    feed_all(captures, [head + body], [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body])
    (exchange,) = captures.exchanges()
    assert exchange.request_body == b"x" * 10 and exchange.request_bytes == 100
    assert exchange.response_body == b"x" * 10 and exchange.response_bytes == 100
    assert not exchange.replayable


def test_a_long_body_is_counted_to_its_end_and_the_next_exchange_follows() -> None:
    captures = Captures(body_cap_bytes=4)
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabcdef")
    for _ in range(999):
        tap.feed_response(b"y" * 1000)
    tap.feed_response(b"y" * 994 + b"HTTP/1.1 204 No Content\r\n\r\n")
    tap.close()
    seen = [(e.target, e.status, e.response_body, e.response_bytes) for e in captures.exchanges()]
    assert seen == [("/big", 200, b"abcd", 1_000_000), ("/next", 204, b"", 0)]
    assert captures.abandoned == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_proxy_protocol_header_before_the_requests_is_passed_over(version: str) -> None:
    from muxtunnel.vhost.proxy_protocol import encode_proxy_header

    header = encode_proxy_header(version, ("192.0.2.1", 4000), ("198.51.100.2", 80))
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(header)
    tap.feed_request(b"GET /behind-proxy HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [e.target for e in captures.exchanges()] == ["/behind-proxy"]


def test_bodies_that_are_not_text_are_shown_as_binary() -> None:
    captures = Captures(body_cap_bytes=5)
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"POST /img HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\x89PNG")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab\xc3\xa9\xc3\xa9")
    (exchange,) = captures.exchanges()
    shown = exchange.to_dict()
    assert shown["request_body"] is None and shown["request_bytes"] == 4
    assert shown["response_body"] == "ab\u00e9"  # the second é was cut at the cap: dropped


def test_the_ring_keeps_the_newest() -> None:
    captures = Captures(size=3)
    tap = Tap(captures, "app", "p")
    for n in range(5):
        tap.feed_request(f"GET /{n} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        tap.feed_response(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert [e.target for e in captures.exchanges()] == ["/2", "/3", "/4"]
    assert captures.recorded == 5
    assert captures.get(captures.exchanges()[0].id) is captures.exchanges()[0]


def test_an_upgrade_is_recorded_then_no_longer_followed() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    tap.feed_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    tap.feed_request(b"\x81\x82abcd\x00\x00")
    tap.close()
    assert [(e.target, e.status) for e in captures.exchanges()] == [("/ws", 101)]
    assert captures.abandoned == 0


#: A TLS ClientHello's first bytes, an SSH banner, binary: none of them a request line.
NOT_HTTP = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"\x00\x01 x\r\n\r\n",
]


@pytest.mark.parametrize("first", NOT_HTTP)
def test_what_is_not_http_1_1_is_given_up(first: bytes) -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(first)
    tap.feed_response(b"HTTP/1.1 200 OK\r\n\r\n")
    tap.close()
    assert captures.exchanges() == [] and captures.abandoned == 1


def test_a_flood_of_pipelined_requests_is_given_up_not_buffered() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    tap.feed_request(one * (MAX_WAITING_BYTES // len(one) + 10))  # no answer comes
    assert not tap.active and captures.abandoned == 1


def test_a_connection_closed_before_the_response_is_recorded_so() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    tap.close()
    (exchange,) = captures.exchanges()
    assert exchange.status == 200 and exchange.error == "closed before the response ended"
    assert exchange.response_body == b"abc" and exchange.duration_s is None


def test_a_response_that_ends_with_the_connection() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET / HTTP/1.0\r\n\r\n")
    tap.feed_response(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    tap.feed_response(b"")
    tap.close()
    assert recorded(captures) == [("GET", "/", b"", 200, b"until the end")]


@pytest.mark.anyio
async def test_the_tapped_stream_passes_every_byte_unchanged() -> None:
    """Garbage in the tap (not HTTP) or a response the tap cannot match: the bytes still flow,
    in order, both ways, with half-close."""
    captures = Captures()
    service_end, service_side = memory_stream_pair()
    tapped = ObservedStream(service_side, Tap(captures, "app", "p"))
    sent = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\x00\xffnot http at all" * 100]
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"\xfe" * 5000]
    got_by_service, got_back = bytearray(), bytearray()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def service() -> None:
                while True:
                    try:
                        got_by_service.extend(await service_end.receive())
                    except anyio.EndOfStream:
                        break
                for chunk in answers:
                    await service_end.send(chunk)
                await service_end.send_eof()

            tg.start_soon(service)
            for chunk in sent:
                await tapped.send(chunk)
            await tapped.send_eof()
            while True:
                try:
                    got_back.extend(await tapped.receive())
                except anyio.EndOfStream:
                    break
    await tapped.aclose()
    assert bytes(got_by_service) == b"".join(sent)
    assert bytes(got_back) == b"".join(answers)
    assert captures.abandoned == 1 and recorded(captures) == [("GET", "/", b"", 200, b"ok")]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=20))
def test_the_tap_never_raises_whatever_it_is_fed(chunks: list[tuple[bool, bytes]]) -> None:
    captures = Captures(size=5, body_cap_bytes=8)
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    for to_service, data in chunks:
        (tap.feed_request if to_service else tap.feed_response)(data)
    tap.close()
    assert len(captures.exchanges()) <= 5


def test_heads_that_come_a_byte_at_a_time() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    for byte in b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n":
        tap.feed_request(bytes([byte]))
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        tap.feed_response(bytes([byte]))
    (exchange,) = captures.exchanges()
    assert (exchange.target, exchange.status, exchange.response_body) == ("/slow", 200, b"ok")
    assert exchange.request_headers == (("host", "a"), ("x-a", "1"))


def test_the_ring_holds_heads_unparsed_until_someone_looks() -> None:
    """Parsing a head costs more than finding its end: most are never looked at."""
    from muxtunnel.captures import Exchange, Raw

    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET /x HTTP/1.1\r\nHost: a\r\nAccept:  text/html \r\n\r\n")
    tap.feed_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert [isinstance(e, Raw) for e in captures._ring] == [True]
    (exchange,) = captures.exchanges()
    assert type(exchange) is Exchange and captures._ring[0] is exchange  # parsed once
    assert exchange.request_headers == (("host", "a"), ("accept", "text/html"))
    assert (exchange.status, exchange.reason) == (404, "Not Found")
    assert captures.get(exchange.id) is exchange


def test_an_upgrade_refused_lets_the_requests_after_it_be_followed() -> None:
    """Bytes after an upgrade request wait for the answer: on a 101 they are not HTTP."""
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
    tap.feed_request(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    tap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [(e.target, e.status) for e in captures.exchanges()] == [("/ws", 400), ("/next", 200)]


def test_informational_answers_before_the_response_are_passed_over() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(
        b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    tap.feed_response(b"HTTP/1.1 100 Continue\r\n\r\n")
    tap.feed_request(b"abc")
    tap.feed_response(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert recorded(captures) == [("PUT", "/f", b"abc", 201, b"")]


def test_an_answer_before_the_request_body_ended_waits_for_it() -> None:
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    tap.feed_response(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert captures.exchanges() == []
    tap.feed_request(b"def")
    assert recorded(captures) == [("POST", "/big", b"abcdef", 413, b"")]


_NAME = st.sampled_from(["X-A", "accept", "X-Trace-Id", "Cookie", "user-agent"])
_VALUE = st.text(alphabet="abcXYZ019 =;/.,-", max_size=12).map(str.strip)
_BODY = st.binary(max_size=40)


@st.composite
def _exchanges(
    draw: st.DrawFn,
) -> list[tuple[str, bool, list[tuple[str, str]], str, bytes, int, bool]]:
    """(method, chunked request, headers, target, body, status, chunked response) of a few
    exchanges."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]),
                st.booleans(),
                st.one_of(
                    st.just([("Accept", "*/*")]), st.lists(st.tuples(_NAME, _VALUE), max_size=4)
                ),
                st.sampled_from(["/0", "/1", "/a?b=1"]),
                _BODY,
                st.sampled_from([200, 201, 204, 304, 404, 500]),
                st.booleans(),
            ),
            min_size=1,
            max_size=6,
        )
    )


@settings(max_examples=150, deadline=None)
@given(_exchanges(), st.lists(st.integers(0, 4000), max_size=8), st.data())
def test_the_tap_records_what_h11_wrote_however_it_is_cut(
    exchanges: list[tuple[str, bool, list[tuple[str, str]], str, bytes, int, bool]],
    cuts: list[int],
    data: st.DataObject,
) -> None:
    """h11 (a strict implementation) writes both sides; the tap, fed them in any pieces, must
    record each exchange as it was written. Targets, header lines and answer heads repeat (a
    few of each), so heads the tap saw before (whole, or but their request line), framed from
    what it remembers of them, meet heads it did not."""
    import h11

    client, server = h11.Connection(h11.CLIENT), h11.Connection(h11.SERVER)
    requests, responses, expected = bytearray(), bytearray(), []
    for n, (method, chunked, headers, target, body, status, chunked_answer) in enumerate(exchanges):
        length = str(len(body))
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", length)
        head = [("Host", "app"), *headers, framing]
        out = client.send(h11.Request(method=method, target=target, headers=head))
        out += client.send(h11.Data(data=body)) if body else b""
        out += client.send(h11.EndOfMessage())
        requests += out
        server.receive_data(out)
        while type(server.next_event()) is not h11.EndOfMessage:
            pass
        answer = f"answer {n}".encode() if status not in (204, 304) else b""
        response_head = [("X-N", str(n % 2))]
        if status not in (204, 304):
            response_head.append(
                ("Transfer-Encoding", "chunked")
                if chunked_answer
                else ("Content-Length", str(len(answer)))
            )
        responses += server.send(h11.Response(status_code=status, headers=response_head))
        if answer and method != "HEAD":
            responses += server.send(h11.Data(data=answer))
        responses += server.send(h11.EndOfMessage())
        server.start_next_cycle()
        client = h11.Connection(h11.CLIENT)  # the same bytes as a client that read the answer
        sent_headers = tuple((k.lower(), v) for k, v in head)
        shown = answer if method != "HEAD" else b""
        expected.append((method, target, sent_headers, body, status, shown))
    captures = Captures()
    tap = Tap(captures, "app", "p")
    request_pieces = split(bytes(requests), cuts)
    response_pieces = split(bytes(responses), data.draw(st.lists(st.integers(0, 4000), max_size=8)))
    while request_pieces or response_pieces:  # requests lead, answers follow as they may
        if request_pieces and (not response_pieces or data.draw(st.booleans())):
            tap.feed_request(request_pieces.pop(0))
        else:
            tap.feed_response(response_pieces.pop(0))
    tap.close()
    seen = [
        (e.method, e.target, e.request_headers, e.request_body, e.status, e.response_body)
        for e in captures.exchanges()
    ]
    assert seen == expected and captures.abandoned == 0
    assert all(e.error is None for e in captures.exchanges())


def test_a_repeated_head_is_framed_by_the_request_it_answers() -> None:
    """The same answer head after a GET (a body follows), after a HEAD (none does), and as a
    204; the same request head with and without a body: each framed as if seen first."""
    get = b"GET /r HTTP/1.1\r\nHost: app\r\n\r\n"
    head = b"HEAD /r HTTP/1.1\r\nHost: app\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    post = b"POST /r HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\n"
    captures = Captures()
    tap = Tap(captures, "app", "p")
    for request, response in [
        (get, ok + b"abcd"),
        (get, ok + b"efgh"),
        (head, ok),
        (get, ok + b"ijkl"),
        (post + b"xyz", ok + b"mnop"),
        (post + b"uvw", ok + b"qrst"),
        (get + get, ok + b"1234" + ok + b"5678"),
    ]:
        tap.feed_request(request)
        tap.feed_response(response)
    tap.close()
    assert recorded(captures) == [
        ("GET", "/r", b"", 200, b"abcd"),
        ("GET", "/r", b"", 200, b"efgh"),
        ("HEAD", "/r", b"", 200, b""),
        ("GET", "/r", b"", 200, b"ijkl"),
        ("POST", "/r", b"xyz", 200, b"mnop"),
        ("POST", "/r", b"uvw", 200, b"qrst"),
        ("GET", "/r", b"", 200, b"1234"),
        ("GET", "/r", b"", 200, b"5678"),
    ]
    assert captures.abandoned == 0


def test_a_repeated_head_that_came_in_pieces_then_a_short_one() -> None:
    """A known head finished by a later piece, then a head shorter than what was searched of
    the first: the second head's blank line is still found where it is."""
    long = b"GET /long HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n"
    short = b"GET /s HTTP/1.1\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    captures = Captures()
    tap = Tap(captures, "app", "p")
    tap.feed_request(long)
    tap.feed_response(ok)
    tap.feed_request(long[:50])
    tap.feed_request(long[50:] + short)
    tap.feed_request(b"GET /t HTTP/1.1\r\nHost: app\r\n\r\n")
    tap.feed_response(ok * 3)
    tap.close()
    assert [e.target for e in captures.exchanges()] == ["/long", "/long", "/s", "/t"]
    assert captures.exchanges()[2].request_headers == ()


def test_another_target_with_the_same_headers_is_framed_as_seen_first() -> None:
    """The same header lines after another request line (what the tap takes from the last
    request head but its target): another target, another method (a HEAD: no answer body), a
    body, a bare-LF request line, an upgrade and a request line too long to compare, each
    framed and recorded as if seen first."""
    lines = b"\r\nHost: app\r\nAccept: */*\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    long_target = b"/l?" + b"q" * 9000
    captures = Captures()
    tap = Tap(captures, "app", "p")
    for request, response in [
        (b"GET /a HTTP/1.1" + lines, ok + b"abcd"),
        (b"GET /b?x=1 HTTP/1.1" + lines, ok + b"efgh"),
        (b"HEAD /c HTTP/1.1" + lines, ok),
        (b"HEAD /c2 HTTP/1.1" + lines, ok),
        (b"GET /d HTTP/1.1" + lines[:-2] + b"Content-Length: 2\r\n\r\nzz", ok + b"ijkl"),
        (b"GET /e HTTP/1.1" + lines + b"GET /f HTTP/1.1" + lines, ok + b"mnop" + ok + b"qrst"),
        (b"GET /g HTTP/1.1\n" + lines[2:], ok + b"uvwx"),
        (b"GET " + long_target + b" HTTP/1.1" + lines, ok + b"yzAB"),
    ]:
        tap.feed_request(request)
        tap.feed_response(response)
    tap.feed_request(b"GET /ws HTTP/1.1" + lines[:-2] + b"Connection: upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")  # fmt: skip
    tap.feed_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    tap.close()
    assert recorded(captures) == [
        ("GET", "/a", b"", 200, b"abcd"),
        ("GET", "/b?x=1", b"", 200, b"efgh"),
        ("HEAD", "/c", b"", 200, b""),
        ("HEAD", "/c2", b"", 200, b""),
        ("GET", "/d", b"zz", 200, b"ijkl"),
        ("GET", "/e", b"", 200, b"mnop"),
        ("GET", "/f", b"", 200, b"qrst"),
        ("GET", "/g", b"", 200, b"uvwx"),
        ("GET", long_target.decode(), b"", 200, b"yzAB"),
        ("GET", "/ws", b"", 101, b""),
    ]
    exchanges = captures.exchanges()
    assert all(e.request_headers == (("host", "app"), ("accept", "*/*")) for e in exchanges[:4])
    assert captures.abandoned == 0 and all(e.error is None for e in exchanges)
