"""The shared TLS port end to end: SNI passthrough to a service that holds its own certificate
(openssl s_client and Python's ssl), unknown names refused with an alert, and TLS terminated by
`listen` with a wildcard certificate for HTTP services."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e.harness import Harness
from vhost.certs import CertFiles, make_cert
from vhost.helpers import require_tool
from vhost.test_tls import https_backend, tls_get

from .web import DOMAIN, curl, web_listen


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    folder = tmp_path_factory.mktemp("web-certs")
    return {
        "secure": make_cert(folder, "secure", [f"secure.{DOMAIN}"]),
        "wildcard": make_cert(folder, "wildcard", [f"*.{DOMAIN}", DOMAIN]),
    }


def test_https_service_routed_by_sni(harness: Harness, certs: dict[str, CertFiles]) -> None:
    openssl = require_tool("openssl")
    web = web_listen(harness, https=True)
    assert web.https_port is not None
    with https_backend("secure", certs["secure"]) as secure:
        up = harness.up(web.listen, https=[f"secure={secure.server_address[1]}"])
        assert up.services()["secure"].url == f"https://secure.{DOMAIN}:{web.https_port}"
        # Python's ssl verifies the service's own certificate: TLS ends at the service.
        report = tls_get(web.https_port, f"secure.{DOMAIN}", certs["secure"].cert, "/py")
        assert report["backend"] == "secure" and report["path"] == "/py"
        headers = [name.lower() for name, _ in report["headers"]]  # type: ignore[attr-defined]
        assert not any(name.startswith("x-forwarded") for name in headers)
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{web.https_port}",
             "-servername", f"secure.{DOMAIN}", "-CAfile", certs["secure"].cert,
             "-verify_return_error", "-quiet"],
            input=f"GET /ossl HTTP/1.1\r\nHost: secure.{DOMAIN}\r\nConnection: close\r\n\r\n"
            .encode(), capture_output=True, timeout=20,
        )  # fmt: skip
        assert b'"backend": "secure"' in result.stdout, result.stderr
        unknown = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{web.https_port}",
             "-servername", f"nope.{DOMAIN}"],
            input=b"", capture_output=True, timeout=20,
        )  # fmt: skip
        alert = unknown.stderr
        assert b"alert unrecognized name" in alert or b"alert number 112" in alert, alert


def test_tls_terminated_by_listen_with_a_wildcard_certificate(
    harness: Harness, certs: dict[str, CertFiles], tmp_path: Path
) -> None:
    from vhost.helpers import backend

    wildcard = certs["wildcard"]
    config = harness.write(
        "listen.yaml", f"server:\n  https:\n    cert: {wildcard.cert}\n    key: {wildcard.key}\n"
    )
    web = web_listen(harness, https=True, config=config)
    assert web.https_port is not None
    with backend("app") as app:
        up = harness.up(web.listen, http=[f"app={app.server_address[1]}"])
        url = up.services()["app"].url
        assert url == f"http://app.{DOMAIN}:{web.http_port}"
        report = tls_get(web.https_port, f"app.{DOMAIN}", wildcard.cert, "/secure")
        assert report["backend"] == "app"
        headers = {k.lower(): v for k, v in report["headers"]}  # type: ignore[attr-defined]
        assert headers["x-forwarded-proto"] == "https"
        answer = curl(
            f"https://app.{DOMAIN}:{web.https_port}/curl",
            "--resolve", f"app.{DOMAIN}:{web.https_port}:127.0.0.1",
            "--cacert", wildcard.cert,
        )  # fmt: skip
        assert answer.status == 200 and answer.seen("X-Forwarded-Proto") == ["https"]
        # Plain HTTP still works on the HTTP port, and says so.
        plain = curl(url + "/", "--resolve", f"app.{DOMAIN}:{web.http_port}:127.0.0.1")
        assert plain.seen("X-Forwarded-Proto") == ["http"]
