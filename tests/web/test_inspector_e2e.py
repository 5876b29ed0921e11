"""The inspector of a real `up` without a browser: both ways a visitor's bytes can take (the
callback relay, or the general path when the service is compressed) are tapped, and what the
visitors get is unchanged."""

from __future__ import annotations

import json
import urllib.request

import pytest
from e2e.harness import Harness, free_port, wait_until
from vhost.helpers import backend

from .web import DOMAIN, get, web_listen


def inspector(port: int, path: str = "/api/requests") -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        data: dict[str, object] = json.load(answer)
    return data


@pytest.mark.parametrize("compress", [False, True], ids=["relay", "compressed"])
def test_requests_through_up_are_recorded(harness: Harness, compress: bool) -> None:
    port = free_port()
    web = web_listen(harness)
    with backend("app") as app:
        extra = ["--inspect", f"127.0.0.1:{port}", *(["--compress"] if compress else [])]
        harness.up(web.listen, http=[f"app={app.server_address[1]}"], extra=extra)
        host = f"app.{DOMAIN}"
        answers = [get(web.http_port, host, f"/items/{n}") for n in range(3)]
        big = get(web.http_port, host, "/bytes/200000")
        assert [a.json()["path"] for a in answers] == ["/items/0", "/items/1", "/items/2"]
        assert big.status == 200 and big.body == b"x" * 200_000  # unchanged past the tap

        def four() -> list[dict[str, object]] | None:
            found = inspector(port)["requests"]
            assert isinstance(found, list)
            return found if len(found) == 4 else None

        found = wait_until(four, 10, "four recorded requests")
        assert [r["target"] for r in found] == ["/bytes/200000", "/items/2", "/items/1", "/items/0"]
        assert all(r["status"] == 200 and r["error"] is None for r in found)
        assert found[0]["response_bytes"] == 200_000  # counted whole, kept cut
        detail = inspector(port, f"/api/requests/{found[0]['id']}")
        assert len(str(detail["response_body"])) == 16 * 1024
