"""Echo peers for interoperability checks against any yamux implementation (`python -m mux`).

`echo_stream` is the project's one echo loop: the tests, the benchmarks and the Go interop
checks all echo with it (tests reach it as `mux.testing.echo_stream`).
"""

from __future__ import annotations

import hashlib
import random
import sys

import anyio
import anyio.abc

from mux._config import MuxConfig
from mux.aio import MuxStream, Session, SessionClosed


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def echo_stream(stream: MuxStream, go: anyio.Event | None = None) -> None:
    """Send back every byte (once `go` is set, if given); half-close after the peer's FIN.

    A reset or the end of the session ends the echo quietly: the peer sees it on its side.
    """
    try:
        if go is not None:
            await go.wait()
        async with stream:
            while True:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    break
                await stream.send(data)
            await stream.send_eof()
    except anyio.BrokenResourceError:
        pass  # reset or session gone: nothing to echo to


async def echo_streams(
    session: Session, task_group: anyio.abc.TaskGroup, go: anyio.Event | None = None
) -> None:
    """Echo every stream the peer opens, each in a task of `task_group`, until the session ends."""
    try:
        while True:
            task_group.start_soon(echo_stream, await session.accept_stream(), go)
    except SessionClosed:
        pass


async def serve_session(transport: anyio.abc.ByteStream, client: bool, config: MuxConfig) -> None:
    async with (
        Session(transport, client=client, config=config) as session,
        anyio.create_task_group() as tg,
    ):
        await echo_streams(session, tg)
        tg.cancel_scope.cancel()


async def echo_server(listen: str, client_side: bool, config: MuxConfig) -> None:
    host, port = split_host_port(listen)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_address)
    print(f"listening {bound[0]}:{bound[1]}", flush=True)

    async def handle(transport: anyio.abc.SocketStream) -> None:
        await serve_session(transport, client_side, config)

    await listener.serve(handle)


def pattern(index: int, size: int) -> bytes:
    """Pseudo-random bytes, reproducible per stream index."""
    return random.Random(index).randbytes(size)


async def check_stream(session: Session, index: int, size: int, failures: list[str]) -> None:
    payload = pattern(index, size)
    stream = await session.open_stream()
    received = bytearray()

    async def reader() -> None:
        while True:
            try:
                received.extend(await stream.receive())
            except anyio.EndOfStream:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        view = memoryview(payload)
        for offset in range(0, size, 65536):
            await stream.send(view[offset : offset + 65536].tobytes())
        await stream.send_eof()
    await stream.aclose()
    if bytes(received) != payload:
        failures.append(
            f"stream {index}: sent {size} bytes sha256 {hashlib.sha256(payload).hexdigest()[:16]}, "
            f"got {len(received)} bytes sha256 {hashlib.sha256(received).hexdigest()[:16]}"
        )


async def echo_client(
    connect: str, streams: int, size: int, server_side: bool, timeout_s: float, config: MuxConfig
) -> int:
    host, port = split_host_port(connect)
    failures: list[str] = []
    try:
        with anyio.fail_after(timeout_s):
            transport = await anyio.connect_tcp(host, port)
            async with Session(transport, client=not server_side, config=config) as session:
                async with anyio.create_task_group() as tg:
                    for index in range(streams):
                        tg.start_soon(check_stream, session, index, size, failures)
    except TimeoutError:
        print(f"timeout after {timeout_s} s", file=sys.stderr)
        return 1
    except (OSError, anyio.BrokenResourceError) as exc:
        print(f"failed: {exc!r}", file=sys.stderr)
        return 1
    if failures:
        for failure in failures:
            print(failure, file=sys.stderr)
        return 1
    print(f"ok {streams} streams {size} bytes", flush=True)
    return 0
