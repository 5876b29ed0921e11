"""A visitor stream of a `muxtunnel visit` whose private service another node of the cluster
holds: sent on to that node (`_cluster_private`), which admits it as a visitor of its provider.
This node keeps what is the visit's: its grant (a revocation cuts the stream), the visitor's
own compression and its budget, the metering of its bytes under the service's name.
"""

from __future__ import annotations

import anyio
import anyio.abc

from mux import MuxStream
from muxtunnel.compress import CompressedStream, stream_memory_bytes
from muxtunnel.forward import forward
from muxtunnel.quota import Quota
from muxtunnel.server._host import Host
from muxtunnel.server._private import Grant
from muxtunnel.server._visitors import REFUSED
from muxtunnel.specs import format_host_port
from muxtunnel.udp import UdpCounters
from muxtunnel.udpflow import relay_flow

__all__ = ["serve_elsewhere"]


async def serve_elsewhere(
    host: Host,
    grant: Grant,
    stream: MuxStream,
    compressed: bool,
    peer: tuple[str, int],
    compression: Quota,
    session_id: int,
) -> None:
    """Send one visitor stream of `grant` to the node holding its service, and pipe it."""
    name = grant.name
    assert host.cluster is not None
    target = await host.cluster.open_private(name, grant.type, grant.key_id, peer)
    if target is None:
        host.refusals.refuse("provider_offline", "visitor refused: its provider is offline",
                             session=session_id, service=name)  # fmt: skip
        stream.reset()
        return
    with anyio.CancelScope() as scope:
        grant.splices.add(scope)
        try:
            if grant.type == "udp":
                idle_s = host.config.udp_flow_idle_s
                await relay_flow(stream, target, UdpCounters(), idle_s=idle_s)
            else:
                await _forward(host, grant, stream, target, compressed, peer, compression,
                               session_id)  # fmt: skip
        finally:
            grant.splices.discard(scope)
    if scope.cancelled_caught:  # revoked: both ends see a failure
        stream.reset()
        target.reset()


async def _forward(
    host: Host,
    grant: Grant,
    stream: MuxStream,
    target: MuxStream,
    compressed: bool,
    peer: tuple[str, int],
    compression: Quota,
    session_id: int,
) -> None:
    visitor: anyio.abc.ByteStream = stream
    memory = 0
    if grant.compression and compressed:  # the visitor's hop, as its grant agreed
        memory = stream_memory_bytes(grant.compression_level)
        if not compression.try_take(grant.name, memory):
            host.refusals.refuse("compression_budget", REFUSED["compression_budget"],
                                 service=grant.name, source=peer[0])  # fmt: skip
            stream.reset()
            target.reset()
            return
        visitor = CompressedStream(stream, grant.compression_level)
    try:
        await forward(
            visitor, target, visitor_side=True, service=grant.name,
            peer=format_host_port(*peer), traffic=host.traffic_of(grant.name),
            visitor_session=session_id,
        )  # fmt: skip
    finally:
        if memory:
            compression.give_back(grant.name, memory)
