"""The seam into anyio's asyncio socket streams (`mux/_anyio_seam.py`) still fits anyio.

If anyio renames what the seam reads, these fail: the fast path must never switch itself off
silently (it would only show up as a slower benchmark). Run on plain asyncio and on uvloop, with
connected and accepted sockets.
"""

from __future__ import annotations

import os
from collections import deque
from importlib.metadata import version

import anyio
import anyio.abc
import pytest

from mux import pause_reading, read_one_chunk_per_wait, write_now
from mux._anyio_seam import socket_internals
from mux._carrier import TransportCarrier
from mux.testing import memory_stream_pair, tcp_stream_pair


def test_anyio_is_in_the_range_the_seam_was_checked_against() -> None:
    major, minor = (int(part) for part in version("anyio").split(".")[:2])
    assert (major, minor) == (4, 16), version("anyio")


@pytest.mark.anyio
async def test_connected_and_accepted_sockets_expose_what_the_seam_reads() -> None:
    async with tcp_stream_pair() as (connected, accepted):
        for stream in (connected, accepted):
            internals = socket_internals(stream)
            assert internals is not None, f"anyio changed its asyncio {type(stream).__name__}"
            assert isinstance(internals.unread, deque)
            assert internals.at_eof is False
            assert TransportCarrier.attach(stream) is not None


@pytest.mark.anyio
async def test_other_streams_are_left_alone() -> None:
    left, right = memory_stream_pair(1024)
    assert socket_internals(left) is None
    pause_reading(left)  # no-ops, no errors
    read_one_chunk_per_wait(right)
    assert write_now(left, b"x") is False  # the caller sends as usual


@pytest.mark.anyio
async def test_write_now_writes_while_there_is_room_and_never_to_a_broken_socket() -> None:
    async with tcp_stream_pair() as (sender, receiver):
        assert write_now(sender, b"hello ")
        await sender.send(b"world")  # in order with what write_now wrote
        received = b""
        with anyio.fail_after(10):
            while len(received) < 11:
                received += await receiver.receive()
        assert received == b"hello world"
        pause_reading(receiver)
        # A peer that reads nothing: the kernel's buffers fill, then the transport's; from
        # then on write_now refuses (the caller's send waits for room).
        refused = False
        with anyio.fail_after(10):
            for _ in range(10_000):
                if not write_now(sender, b"x" * 65536):
                    refused = True
                    break
                await anyio.sleep(0)  # let the loop flush to the kernel and pause writing
        assert refused
        await receiver.aclose()
    assert write_now(sender, b"late") is False  # closed: send raises for the caller


@pytest.mark.anyio
async def test_one_chunk_per_wait_still_delivers_every_byte() -> None:
    payload = os.urandom(3 * 1024 * 1024)
    async with tcp_stream_pair() as (sender, receiver):
        read_one_chunk_per_wait(receiver)
        received = bytearray()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.send, payload)
                while len(received) < len(payload):
                    received += await receiver.receive(256 * 1024)
        assert bytes(received) == payload


@pytest.mark.anyio
async def test_paused_socket_reads_only_when_asked() -> None:
    async with tcp_stream_pair() as (sender, receiver):
        pause_reading(receiver)
        await sender.send(b"x" * 1000)
        await anyio.sleep(0.05)
        internals = socket_internals(receiver)
        assert internals is not None
        assert not internals.unread  # nothing read while nobody waits
        with anyio.fail_after(5):
            assert await receiver.receive() == b"x" * 1000
