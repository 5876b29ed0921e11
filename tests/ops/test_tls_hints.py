"""TLS mistakes say what is wrong and which flag fixes it, instead of retrying in silence."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from muxtunnel.model import ClientTls, ServerTls

from .helpers import (
    Pair,
    client_config,
    echo_service,
    make_pair,
    running_client,
    running_server,
    server_config,
    tcp,
)

pytestmark = pytest.mark.anyio


async def test_a_client_certificate_the_server_does_not_trust_is_named(
    certs: dict[str, Pair], tmp_path: Path
) -> None:
    stranger = make_pair(tmp_path, "stranger", client=True)  # not the one listen trusts
    server_tls = ServerTls(certs["server"].cert, certs["server"].key, certs["client"].cert)
    tls = ClientTls(
        fingerprints=(certs["server"].fingerprint.split(":", 1)[1],),
        cert=stranger.cert,
        key=stranger.key,
    )
    with capture_logs() as logs:
        async with echo_service() as local, running_server(server_config(tls=server_tls)) as s:
            assert s.port is not None
            config = client_config(s.port, tcp("b", local), tls=tls)
            async with running_client(config, wait=False):
                with anyio.fail_after(10):
                    while not [e for e in logs if e["event"] == "connection failed"]:
                        await anyio.sleep(0.05)
    (failed, *_) = [e for e in logs if e["event"] == "connection failed"]
    assert "--tls-cert" in failed["error"] and "--tls-client-ca" in failed["error"], failed
