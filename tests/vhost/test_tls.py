"""The TLS port: SNI passthrough (Python's ssl, openssl s_client), unknown names get an alert,
and termination with a wildcard certificate."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from muxtunnel.vhost import server_tls_context

from .certs import CertFiles, make_cert
from .helpers import (
    TIMEOUT_S,
    Proxy,
    address_of,
    backend,
    read_responses,
    require_tool,
    running_proxy,
)
from .test_upgrade import websocket_echo


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    folder = tmp_path_factory.mktemp("vhost-certs")
    return {
        "secure": make_cert(folder, "secure", ["secure.example.com"]),
        "wildcard": make_cert(folder, "wildcard", ["*.example.com", "example.com"]),
    }


def https_backend(name: str, cert: CertFiles) -> AbstractContextManager[Any]:
    """The JSON backend of `helpers`, behind TLS with its own certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert, cert.key)
    return backend(name, tls=context)


def tls_get(port: int, server_name: str, cafile: str, path: str = "/") -> dict[str, object]:
    """GET over TLS to the proxy's TLS port, verifying the certificate for `server_name`."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\n\r\n".encode())
            (response,) = read_responses(sock, 1)
    assert response.status == 200
    result: dict[str, object] = json.loads(response.body)
    return result


def test_sni_passthrough_with_python_ssl(proxy: Proxy, certs: dict[str, CertFiles]) -> None:
    with https_backend("secure", certs["secure"]) as secure:
        proxy.add_tls("secure", ["secure.example.com"], address_of(secure))
        report = tls_get(proxy.tls_port, "secure.example.com", certs["secure"].cert)
        assert report["backend"] == "secure"
        # Not terminated here: no forwarded headers, the service saw the raw TLS session.
        assert not any(k.lower().startswith("x-forwarded") for k, _ in report["headers"])  # type: ignore[union-attr]
        counters = proxy.snapshot().services["secure"]
        assert counters.tunnels == 1 and counters.bytes_in > 200


def test_sni_passthrough_with_openssl_s_client(proxy: Proxy, certs: dict[str, CertFiles]) -> None:
    openssl = require_tool("openssl")
    with https_backend("secure", certs["secure"]) as secure:
        proxy.add_tls("secure", ["secure.example.com"], address_of(secure))
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{proxy.tls_port}",
             "-servername", "secure.example.com", "-CAfile", certs["secure"].cert,
             "-verify_return_error", "-quiet"],
            input=b"GET /via-openssl HTTP/1.1\r\nHost: secure.example.com\r\n"
                  b"Connection: close\r\n\r\n",
            capture_output=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert b'"backend": "secure"' in result.stdout, result.stderr
        assert b'"/via-openssl"' in result.stdout


def test_unknown_or_missing_sni_gets_an_unrecognized_name_alert(
    proxy: Proxy, certs: dict[str, CertFiles]
) -> None:
    openssl = require_tool("openssl")
    with https_backend("secure", certs["secure"]) as secure:
        proxy.add_tls("secure", ["secure.example.com"], address_of(secure))
        context = ssl.create_default_context(cafile=certs["secure"].cert)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=TIMEOUT_S) as raw:
                with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                    context.wrap_socket(raw, server_hostname="other.example.com")
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{proxy.tls_port}",
             "-servername", "nope.example.com"],
            input=b"", capture_output=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert (
            b"alert unrecognized name" in result.stderr or b"alert number 112" in result.stderr
        ), result.stderr
        no_sni = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{proxy.tls_port}", "-noservername"],
            input=b"", capture_output=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert b"alert unrecognized name" in no_sni.stderr or b"alert number 112" in no_sni.stderr
        assert secure.requests == 0  # type: ignore[attr-defined]
    snap = proxy.snapshot()
    assert snap.refusals["unknown_sni"] == 5
    # Logged once per name: three names seen ("other" three times).
    assert len(proxy.engine.unknown_names) == 3


def test_not_tls_on_the_tls_port_is_refused(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert proxy.snapshot().refusals["bad_client_hello"] == 1


def test_tls_termination_with_a_wildcard_certificate(
    tmp_path: Path, certs: dict[str, CertFiles]
) -> None:
    wildcard = certs["wildcard"]
    context = server_tls_context(wildcard.cert, wildcard.key)
    with (
        running_proxy(tls_context=context) as proxy,
        backend("app") as app,
        websocket_echo() as ws_address,
    ):
        proxy.add_http("app", ["app.example.com"], address_of(app))
        proxy.add_http("ws", ["ws.example.com"], ws_address)
        report = tls_get(proxy.tls_port, "app.example.com", wildcard.cert, "/secure")
        assert report["backend"] == "app"
        headers = {k.lower(): v for k, v in report["headers"]}  # type: ignore[union-attr]
        assert headers["x-forwarded-proto"] == "https"
        assert "proto=https" in headers["forwarded"]
        # WebSocket over the terminated TLS (wss://).
        client_context = ssl.create_default_context(cafile=wildcard.cert)
        sock = socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=TIMEOUT_S)
        with connect("wss://ws.example.com/secure-chat", sock=sock, ssl=client_context,
                     server_hostname="ws.example.com", open_timeout=TIMEOUT_S) as ws:  # fmt: skip
            assert ws.recv(timeout=TIMEOUT_S).startswith("path=/secure-chat")
            ws.send("over tls")
            assert ws.recv(timeout=TIMEOUT_S) == "over tls"
            closing = time.monotonic()
        # The service's close reached the visitor as close_notify (TLS half-close): the client
        # did not sit out its 10 s close timeout waiting for the end of the stream.
        assert time.monotonic() - closing < 2.0
        # A name that no HTTP route serves still gets the alert, not our certificate.
        with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=TIMEOUT_S) as raw:
            with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                client_context.wrap_socket(raw, server_hostname="unrouted.example.com")
