"""Fixtures of the virtual-host tests; peers and clients live in `helpers.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import Proxy, running_proxy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: Modules whose `proxy` tests run twice: services dialled, and reached over a mux session
#: (as in `listen`, where plain keep-alive requests take the callback path).
MUXED_MODULES = ("test_fast_path", "test_callback_path", "test_repeats")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "proxy" in metafunc.fixturenames:
        muxed = metafunc.module.__name__.rpartition(".")[2] in MUXED_MODULES
        only_mux = getattr(metafunc.module, "ONLY_MUXED", False)
        params = ["mux"] if only_mux else ["direct", "mux"] if muxed else ["direct"]
        metafunc.parametrize("proxy", params, indirect=True)


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    """The engine with default limits, on loopback, no routes yet."""
    with running_proxy(muxed=request.param == "mux") as running:
        yield running
