"""The listener's own accept loop (`muxtunnel.accept.Acceptor`): every queued connection is
accepted per wake-up, never more than `setting_up` at once are being set up, and closing the
listener ends the loop (its EMFILE back-off: tests/attacks/test_isolation_accept.py)."""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest
import testenv

from mux import adopt_accepted, listening_socket
from muxtunnel.transport import listen_tcp, local_port, setup_done

BURST = 24
SETTING_UP = 3


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


@pytest.mark.anyio
async def test_a_queued_burst_is_served_and_setting_up_holds() -> None:
    """Connections queued in the kernel before the loop runs are all served, each echoing its
    own bytes, while no more than `setting_up` handlers are before their `setup_done`."""
    listener = await listen_tcp("127.0.0.1", 0)
    port = local_port(listener)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(BURST)]
    for i, client in enumerate(clients):
        client.sendall(b"%03d" % i)
    setting_up = 0
    most = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal setting_up, most
        setting_up += 1
        most = max(most, setting_up)
        await anyio.sleep(0.01)  # the others queue meanwhile
        setting_up -= 1
        setup_done()
        await stream.send(await stream.receive())
        await stream.aclose()

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: listener.serve(handler, setting_up=SETTING_UP))
                for i, client in enumerate(clients):
                    client.setblocking(False)
                    got = b""
                    while len(got) < 3:
                        await anyio.wait_readable(client)
                        got += client.recv(3)
                    assert got == b"%03d" % i
                tg.cancel_scope.cancel()
    finally:
        for client in clients:
            client.close()
        await listener.aclose()
    assert 1 <= most <= SETTING_UP


@pytest.mark.anyio
async def test_closing_the_listener_ends_its_accept_loop() -> None:
    """`aclose` while `serve` waits: the loop ends with ClosedResourceError (as anyio's own
    accept does), and no reader is left on the closed socket."""
    listener = await listen_tcp("127.0.0.1", 0)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.aclose()

    with anyio.fail_after(5):
        with pytest.raises(BaseException) as caught:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, handler)
                await anyio.sleep(0.05)
                await listener.aclose()
        assert caught.group_contains(anyio.ClosedResourceError)
        await anyio.sleep(0.05)  # a reader left behind would fail the loop here


@pytest.mark.anyio
async def test_the_seam_knows_anyios_listener() -> None:
    """anyio's asyncio TCP listener is recognised (else every listener silently falls back to
    anyio's accept and its per-connection reader churn), and what `adopt_accepted` makes of
    an accepted socket is the stream anyio's own accept makes."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    inner = listener.listeners[0]
    raw = listening_socket(inner)
    assert raw is not None
    with anyio.fail_after(5):
        client = socket.create_connection(raw.getsockname()[:2])
        await anyio.wait_readable(raw)
        accepted, _ = raw.accept()
        stream = await adopt_accepted(accepted)
        async with await anyio.connect_tcp(*raw.getsockname()[:2]) as other:
            assert type(stream) is type(other)
        await stream.send(b"hi")
        client.settimeout(5)
        assert client.recv(2) == b"hi"
        client.close()
        await stream.aclose()
    await listener.aclose()
