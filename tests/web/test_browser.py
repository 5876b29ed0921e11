"""The dashboard and the inspector in a real browser (Debian's chromium, headless, driven by
Selenium) against real `listen` and `up` processes with traffic flowing.

The browser is missing: skipped on a developer's machine, a failure under CI=true
(`scripts/install-system-deps.sh` installs chromium and chromium-driver). With
MUXTUNNEL_SCREENSHOTS=DIR the tests save the screenshots the README shows (docs/).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import Harness, TcpEchoServer, free_port
from vhost.helpers import backend

from .web import DOMAIN, ci, get, web_listen

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the dev extra installs it: missing, it fails CI, never hides there
    if ci():
        raise
    pytest.skip("selenium is not installed (pip install -e '.[dev]')", allow_module_level=True)

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)  # fmt: skip
#: How long the page may take to show what the test waits for (a tick a second; a loaded
#: 2-core machine).
WAIT_S = 20.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "chromium and chromium-driver are needed (scripts/install-system-deps.sh)"
        if ci():
            pytest.fail(message)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="muxtunnel-chromium-")
    options = webdriver.ChromeOptions()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = chromium
    service = webdriver.ChromeService(executable_path=driver)
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(WAIT_S)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(chrome: Any, what: str, condition: Callable[[], Any]) -> Any:
    """Poll `condition` until it is truthy (its value), for at most `WAIT_S`. The pages redraw
    their tables on every update: an element found just before a redraw is stale, try again."""
    return WebDriverWait(
        chrome, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda _: condition(), message=f"the page never showed {what}")


def screenshot(chrome: Any, name: str) -> None:
    folder = os.environ.get("MUXTUNNEL_SCREENSHOTS")
    if folder:
        chrome.save_screenshot(str(Path(folder) / name))


class Traffic:
    """Bytes through a TCP service, both ways, and requests to an HTTP one, until stopped:
    what the charts show."""

    def __init__(self, host: str, port: int, web_port: int, web_host: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.stop = threading.Event()
        self.echoed = self.requests = 0
        self.web_port, self.web_host = web_port, web_host
        self.threads = [threading.Thread(target=run, daemon=True) for run in (self._run, self._get)]
        for thread in self.threads:
            thread.start()

    def _get(self) -> None:
        while not self.stop.wait(0.2):
            self.requests += get(self.web_port, self.web_host, "/bytes/20000").status == 200

    def _run(self) -> None:
        block = b"m" * 32768
        try:
            while not self.stop.is_set():
                self.sock.sendall(block)
                got = 0
                while got < len(block):
                    got += len(self.sock.recv(len(block) - got))
                self.echoed += got
                time.sleep(0.02)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.sock.close()


def cell(chrome: Any, section: str, key: str, row: int = 0) -> str:
    cells = chrome.find_elements(By.CSS_SELECTOR, f"#section-{section} td[data-key='{key}']")
    return str(cells[row].text) if len(cells) > row else ""


def test_the_dashboard_shows_live_traffic(harness: Harness, browser: Any) -> None:
    dashboard = free_port()
    web = web_listen(harness, "--dashboard", f"127.0.0.1:{dashboard}")
    echo = TcpEchoServer()
    with backend("site") as site:
        up = harness.up(
            web.listen, tcp=[f"echo={echo.port}"], http=[f"site={site.server_address[1]}"]
        )
        traffic = Traffic(*up.public("echo"), web.http_port, f"site.{DOMAIN}")
        try:
            for n in range(3):
                assert get(web.http_port, f"site.{DOMAIN}", f"/page/{n}").status == 200
            browser.get(f"http://127.0.0.1:{dashboard}/")
            wait(
                browser, "the live mark", lambda: browser.find_element(By.ID, "live").text == "live"
            )
            first_seq = int(wait(browser, "a tick", lambda: browser.execute_script(
                "return document.body.dataset.seq")))  # fmt: skip
            chart = "#charts .chart[data-service='echo']"
            wait(browser, "the echo chart moving", lambda: float(browser.find_element(
                By.CSS_SELECTOR, chart).get_attribute("data-in-bps") or 0) > 0)  # fmt: skip
            wait(browser, "the site chart", lambda: browser.find_elements(
                By.CSS_SELECTOR, "#charts .chart[data-service='site']"))  # fmt: skip
            before = wait(browser, "bytes_in", lambda: cell(browser, "services", "bytes_in"))
            wait(
                browser, "bytes_in growing", lambda: cell(browser, "services", "bytes_in") != before
            )
            later = int(browser.execute_script("return document.body.dataset.seq"))
            assert later > first_seq  # ticks keep coming
            sessions = wait(browser, "the sessions", lambda: browser.find_element(
                By.ID, "section-sessions").text)  # fmt: skip
            assert "1" in sessions and "echo" in sessions and "site" in sessions
            recent = wait(browser, "recent sessions", lambda: browser.find_element(
                By.ID, "sessions-recent").text)  # fmt: skip
            assert "opened" in recent
            if os.environ.get("MUXTUNNEL_SCREENSHOTS"):
                time.sleep(12)  # a chart with some history
                screenshot(browser, "dashboard.png")
        finally:
            traffic.close()
            echo.close()
        assert traffic.echoed > 0 and traffic.requests > 0


def test_the_inspector_lists_filters_and_replays_requests(harness: Harness, browser: Any) -> None:
    inspector = free_port()
    web = web_listen(harness)
    with backend("app") as app:
        harness.up(
            web.listen,
            http=[f"app={app.server_address[1]}"],
            extra=["--inspect", f"127.0.0.1:{inspector}"],
        )
        host = f"app.{DOMAIN}"
        for n in range(1, 5):
            assert get(web.http_port, host, f"/items?n={n}").status == 200
        assert get(web.http_port, host, "/status/404").status == 404
        post = urllib.request.Request(
            f"http://127.0.0.1:{web.http_port}/orders", data=b'{"qty": 2}', method="POST",
            headers={"Host": host, "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(post, timeout=10) as answer:
            assert answer.status == 200
        served = app.requests
        browser.get(f"http://127.0.0.1:{inspector}/")
        rows = "#requests tbody tr"
        wait(browser, "6 requests", lambda: len(browser.find_elements(By.CSS_SELECTOR, rows)) == 6)
        box = browser.find_element(By.ID, "filter")
        box.send_keys("404")
        wait(browser, "the filter", lambda: len(browser.find_elements(By.CSS_SELECTOR, rows)) == 1)
        wait(browser, "the 404 row", lambda: "/status/404" in browser.find_element(
            By.CSS_SELECTOR, rows).text)  # fmt: skip
        box.clear()
        box.send_keys("POST")
        wait(browser, "the POST", lambda: len(browser.find_elements(By.CSS_SELECTOR, rows)) == 1)
        wait(browser, "a row to click", lambda: browser.find_element(
            By.CSS_SELECTOR, rows).click() or True)  # fmt: skip
        detail = browser.find_element(By.ID, "detail")
        wait(browser, "the request's body", lambda: '"qty": 2' in detail.text)
        assert "content-type: application/json" in detail.text
        browser.find_element(By.ID, "replay").click()
        wait(browser, "the replay's answer", lambda: "replay of #" in detail.text)
        assert app.requests == served + 1  # the replay reached the local service
        assert '"method": "POST"' in detail.text and '"path": "/orders"' in detail.text
        box.clear()  # the list renders unfiltered at its next refresh
        wait(browser, "7 rows", lambda: len(browser.find_elements(By.CSS_SELECTOR, rows)) == 7)
        screenshot(browser, "inspector.png")
