"""Bodies stream through (never buffered whole), 100-continue, and kept upstreams that die."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from muxtunnel.vhost import BasicAuth, RouteOptions

from .helpers import TIMEOUT_S, Proxy, address_of, backend, read_responses, request

MiB = 1024 * 1024


def _chunks(total_bytes: int, chunk_bytes: int = 256 * 1024) -> Iterator[bytes]:
    block = bytes(range(256)) * (chunk_bytes // 256)
    sent = 0
    while sent < total_bytes:
        piece = block[: min(chunk_bytes, total_bytes - sent)]
        sent += len(piece)
        yield piece


def _sha256_of_chunks(total_bytes: int) -> str:
    digest = hashlib.sha256()
    for piece in _chunks(total_bytes):
        digest.update(piece)
    return digest.hexdigest()


def _upload_with_peak(proxy: Proxy, total_bytes: int) -> tuple[dict[str, object], int]:
    """A chunked upload of `total_bytes`; the backend's report and the peak traced memory.

    tracemalloc sees every thread of this process: the proxy, the backend and the client. A
    proxy that buffered the body would show a peak of the body's size.
    """
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        reply = request(
            proxy.http_port, "up.example.com", "/upload", method="PUT", body=_chunks(total_bytes)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status == 200
    return reply.json(), peak


def test_chunked_upload_streams_with_flat_memory(proxy: Proxy) -> None:
    total = 64 * MiB
    with backend("up") as up:
        proxy.add_http("up", ["up.example.com"], address_of(up))
        report, peak = _upload_with_peak(proxy, total)
    assert report["body_bytes"] == total
    assert report["body_sha256"] == _sha256_of_chunks(total)
    assert ["Transfer-Encoding", "chunked"] in report["headers"]
    print(f"64 MiB chunked upload: peak traced memory {peak / MiB:.1f} MiB")
    assert peak < 8 * MiB


@pytest.mark.slow
def test_one_gib_chunked_upload_streams_with_flat_memory(proxy: Proxy) -> None:
    total = 1024 * MiB
    with backend("up") as up:
        proxy.add_http("up", ["up.example.com"], address_of(up))
        started = time.monotonic()
        report, peak = _upload_with_peak(proxy, total)
        elapsed = time.monotonic() - started
    assert report["body_bytes"] == total
    assert report["body_sha256"] == _sha256_of_chunks(total)
    print(f"1 GiB chunked upload: {elapsed:.1f} s, peak traced memory {peak / MiB:.1f} MiB")
    assert peak < 8 * MiB


def test_large_response_streams_to_the_visitor(proxy: Proxy) -> None:
    with backend("down") as down:
        proxy.add_http("down", ["down.example.com"], address_of(down))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        conn.request("GET", f"/bytes/{32 * MiB}", headers={"Host": "down.example.com"})
        response = conn.getresponse()
        assert response.getheader("Content-Length") == str(32 * MiB)
        received = 0
        while chunk := response.read(MiB):
            received += len(chunk)
        conn.close()
        assert received == 32 * MiB


def test_head_request_gets_headers_only(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        conn.request("HEAD", "/", headers={"Host": "app.example.com"})
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        assert int(head.getheader("Content-Length") or 0) > 0
        assert request(proxy.http_port, "app.example.com", connection=conn).status == 200
        conn.close()


def test_expect_100_continue_is_answered_before_the_body(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(
                b"POST /form HTTP/1.1\r\nHost: app.example.com\r\n"
                b"Expect: 100-continue\r\nContent-Length: 11\r\n\r\n"
            )
            interim = sock.recv(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello world")
            (final,) = read_responses(sock, 1)
        assert final.status == 200
        assert b'"body_bytes": 11' in final.body
        assert b"Expect" not in final.body  # answered by us, not forwarded


def test_expect_100_continue_refused_without_reading_the_body(proxy: Proxy) -> None:
    options = RouteOptions(basic_auth=BasicAuth("alice", "s3cret"))
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app), options=options)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(
                b"PUT /big HTTP/1.1\r\nHost: app.example.com\r\n"
                b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"
            )
            (final,) = read_responses(sock, 1)
        assert final.status == 401
        assert final.headers["connection"] == "close"
        assert app.requests == 0


def test_curl_upload_with_expect_100_continue(proxy: Proxy) -> None:
    import subprocess

    from .helpers import require_tool

    curl = require_tool("curl")
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        body = b"z" * (2 * MiB)
        result = subprocess.run(
            [curl, "-sS", "--max-time", "10", "-H", "Host: app.example.com",
             "-H", "Expect: 100-continue", "--data-binary", "@-",
             "-w", "\n%{http_code} %{time_total}", f"http://127.0.0.1:{proxy.http_port}/up"],
            input=body, capture_output=True, check=True, timeout=TIMEOUT_S + 5,
        )  # fmt: skip
        *_, status_line = result.stdout.decode().splitlines()
        status, total_s = status_line.split()
        assert status == "200"
        assert f'"body_bytes": {len(body)}' in result.stdout.decode()
        assert float(total_s) < 0.9  # curl waits 1 s for a 100 Continue that never comes


def test_kept_upstream_closed_while_idle_is_replaced(proxy: Proxy) -> None:
    with backend("app", idle_timeout_s=0.2) as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        try:
            first = request(proxy.http_port, "app.example.com", connection=conn)
            time.sleep(0.5)  # the backend closes its idle connection meanwhile
            upload = request(
                proxy.http_port,
                "app.example.com",
                method="POST",
                body=b"x" * 100000,
                connection=conn,
            )
            time.sleep(0.5)
            get = request(proxy.http_port, "app.example.com", connection=conn)
        finally:
            conn.close()
        assert (first.status, upload.status, get.status) == (200, 200, 200)
        assert upload.json()["body_bytes"] == 100000
        assert (
            len(
                {
                    first.json()["client_port"],
                    upload.json()["client_port"],
                    get.json()["client_port"],
                }
            )
            == 3
        )
