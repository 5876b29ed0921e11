"""`muxtunnel up`: keep one session to the server, register services, serve visitors.

The client opens the control channel (the session's first stream), proves it holds each
service's token, checks the server's proof in return, and from then on accepts the streams the
server opens, one per visitor. When the session ends it reconnects with exponential backoff and
jitter and registers again. Failures a retry cannot fix (a wrong token, a port the server does
not allow) end the client instead: retrying them forever would only hide them.
"""

from __future__ import annotations

import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.auth import client_tag, derive_key, new_nonce, verify_server_tag
from muxtunnel.compress import CompressedStream
from muxtunnel.control import Challenge, Error, Hello, Register, Registered, Unregister
from muxtunnel.limits import MeteredStream, ServiceTraffic
from muxtunnel.model import ClientConfig, ServiceSpec
from muxtunnel.proxy import pipe
from muxtunnel.tls import TlsError, TlsVerifyError, client_context, connect_tls
from muxtunnel.transport import TransportError, abort, connect
from muxtunnel.udp import UdpCounters, serve_flow

log = structlog.get_logger("muxtunnel.client")

#: How long the server may take to answer a control request.
CONTROL_TIMEOUT_S = 10.0
#: How long the server may take to send a visitor stream's header after opening it.
HEADER_TIMEOUT_S = 10.0
#: Registration errors that no retry can fix.
_FINAL_CODES = {control.AUTH_FAILED, control.PORT_NOT_ALLOWED, control.VERSION_MISMATCH}


class FatalError(Exception):
    """A failure to report to the user and exit on; the message is one readable line."""


class RetryableError(Exception):
    """A failure worth another attempt after the backoff."""


@dataclass(slots=True)
class ServiceState:
    """What the client knows about a service while it runs (also shown by the live console)."""

    spec: ServiceSpec
    public: str | None = None
    remote_port: int = 0
    connections: int = 0
    connections_total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    udp: UdpCounters = field(default_factory=UdpCounters)
    flows: OrderedDict[int, MuxStream] = field(default_factory=OrderedDict)
    #: Agreed with the server at registration (None: visitor bytes travel as they are).
    compression: str | None = None


Announce = Callable[[ServiceState], None]


def backoff_s(attempt: int, low_s: float, high_s: float) -> float:
    """Exponential backoff with jitter: about low·2^attempt, capped at high, never in lock step."""
    ceiling = min(high_s, low_s * (2 ** min(attempt, 30)))
    return max(low_s, random.uniform(ceiling / 2, ceiling))


class Client:
    def __init__(self, config: ClientConfig, announce: Announce | None = None) -> None:
        if not config.services:
            raise FatalError("no services to expose: give --tcp/--udp or client.services")
        self.config = config
        self.services = {spec.name: ServiceState(spec) for spec in config.services}
        self.announce = announce or (lambda state: None)
        self.session: Session | None = None
        self.connected = anyio.Event()
        self.reconnects = 0
        #: Built once, so a bad certificate file is reported at start (exit 2), not per retry.
        self.tls_context = client_context(config.tls) if config.tls else None
        self.traffic: dict[str, ServiceTraffic] = {}
        #: Bound ports of the metrics endpoint and admin API ("metrics", "admin"), once running.
        self.endpoint_ports: dict[str, int] = {}
        # The live session's control channel and handshake, for registrations after a reload.
        self._channel: MuxStream | None = None
        self._nonces = (b"", b"")
        self._binding = b""
        self._replies: anyio.abc.ObjectReceiveStream[Registered | Error] | None = None
        self._control_lock = anyio.Lock()

    def traffic_of(self, name: str) -> ServiceTraffic:
        return self.traffic.setdefault(name, ServiceTraffic())

    @property
    def server(self) -> str:
        return f"{self.config.server_host}:{self.config.server_port}"

    async def run(self) -> None:
        """Serve until cancelled; raises `FatalError` for failures a retry cannot fix."""
        if self.config.metrics is None and self.config.admin is None:
            await self._run_sessions()
            return
        from muxtunnel.admin import run_endpoints

        async with anyio.create_task_group() as tg:
            self.endpoint_ports = await tg.start(
                run_endpoints, self.config.metrics, self.config.admin, self
            )
            await self._run_sessions()
            tg.cancel_scope.cancel()

    async def _run_sessions(self) -> None:
        attempt = 0
        first = True
        while True:
            try:
                await self._session_once(first)
                attempt = 0
                reason = self.session.close_reason if self.session else "closed"
                log.warning("session ended", server=self.server, reason=reason)
            except RetryableError as exc:
                log.warning("connection failed", server=self.server, error=str(exc))
            finally:
                self.connected = anyio.Event()
            first = False
            self.reconnects += 1
            delay = backoff_s(attempt, self.config.reconnect_min_s, self.config.reconnect_max_s)
            attempt += 1
            log.info("reconnecting", server=self.server, in_s=round(delay, 2), attempt=attempt)
            await anyio.sleep(delay)

    async def stop(self) -> None:
        """Graceful end: GoAway, let live visitors finish (`drain_timeout_s` at most), then close.

        The caller then cancels `run`.
        """
        session = self.session
        if session is None or session.closed:
            return
        await session.go_away()
        with anyio.move_on_after(self.config.drain_timeout_s):
            while any(state.connections for state in self.services.values()):
                await anyio.sleep(0.05)
        await session.aclose()

    async def _connect(self) -> anyio.abc.ByteStream:
        """The carrier: TCP, wrapped in TLS when configured (sets the channel binding)."""
        host, port = self.config.server_host, self.config.server_port
        try:
            carrier = await connect(host, port)
        except TransportError as exc:
            raise RetryableError(str(exc)) from None
        self._binding = b""
        if self.config.tls is None:
            return carrier
        try:
            with anyio.fail_after(CONTROL_TIMEOUT_S):
                tls, self._binding = await connect_tls(
                    carrier, self.config.tls, host, self.tls_context
                )
        except TlsVerifyError as exc:
            await abort(carrier)
            raise FatalError(str(exc)) from None
        except (TlsError, TimeoutError) as exc:
            await abort(carrier)
            raise RetryableError(str(exc) or "TLS handshake timed out") from None
        return tls

    async def _session_once(self, first: bool) -> None:
        carrier = await self._connect()
        try:
            async with Session(carrier, client=True, config=self.config.mux) as session:
                self.session = session
                channel = await session.open_stream()
                with anyio.fail_after(CONTROL_TIMEOUT_S):
                    nonces = await self._hello(channel)
                    for state in list(self.services.values()):
                        await self._register(channel, state, nonces, first)
                log.info("session opened", server=self.server, services=len(self.services))
                send, self._replies = anyio.create_memory_object_stream[Registered | Error](16)
                self._channel, self._nonces = channel, nonces
                self.connected.set()
                async with anyio.create_task_group() as tg, send:
                    tg.start_soon(self._watch_control, channel, tg.cancel_scope, send)
                    try:
                        while True:
                            tg.start_soon(self._on_stream, await session.accept_stream())
                    except anyio.BrokenResourceError:
                        tg.cancel_scope.cancel()
        except TimeoutError:
            raise RetryableError("the server did not answer in time") from None
        except control.ControlError as exc:
            raise RetryableError(f"bad message from the server: {exc}") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if self.connected.is_set():
                return  # a session that was up ended: the caller reconnects
            hint = ""
            if self.config.tls is not None and self.config.tls.cert is None:
                hint = " (does it want a client certificate? see --tls-cert/--tls-key)"
            reason = f"the server closed the connection: {exc or 'EOF'}{hint}"
            raise RetryableError(reason) from None
        finally:
            self._channel, self._replies = None, None
            for state in self.services.values():
                state.public = None

    async def _hello(self, channel: MuxStream) -> tuple[bytes, bytes]:
        client_nonce = new_nonce()
        await control.send_message(
            channel, Hello(control.PROTOCOL_VERSION, client_nonce, socket.gethostname()[:255])
        )
        reply = await control.receive_message(channel)
        if isinstance(reply, Error):
            raise FatalError(f"server refused the connection: {reply.message}")
        if not isinstance(reply, Challenge):
            raise control.ControlError(f"expected a challenge, got {type(reply).__name__}")
        return reply.server_nonce, client_nonce

    async def _register(
        self,
        channel: MuxStream,
        state: ServiceState,
        nonces: tuple[bytes, bytes],
        first: bool,
        replies: anyio.abc.ObjectReceiveStream[Registered | Error] | None = None,
    ) -> None:
        """Register one service; `replies` carries the answers once `_watch_control` runs."""
        spec = state.spec
        token = spec.token or self.config.token
        if token is None:
            raise FatalError(
                f"service {spec.name!r} has no token: set --token or a token in config"
            )
        key = derive_key(token)
        server_nonce, client_nonce = nonces
        tag = client_tag(key, spec.name, spec.type, server_nonce, client_nonce, self._binding)
        # After a reconnect, ask for the port the server picked before, so visitors keep it.
        port = spec.remote_port or state.remote_port
        level = spec.compression_level if spec.compression else 0
        request = Register(spec.name, spec.type, port, tag, spec.compression, level)
        await control.send_message(channel, request)
        if replies is None:
            reply = await control.receive_message(channel)
        else:
            reply = await replies.receive()
        if isinstance(reply, Error):
            message = f"service {spec.name!r}: {reply.message}"
            tls = self.config.tls
            if reply.code == control.AUTH_FAILED and tls is not None and tls.insecure:
                message += (
                    " (with --insecure TLS this is also what a man in the middle looks like: "
                    "his certificate changes the channel binding; pin the server's with "
                    "--server-fingerprint)"
                )
            if reply.code in _FINAL_CODES or (first and reply.code != control.RATE_LIMITED):
                raise FatalError(message)
            raise RetryableError(message)
        if not isinstance(reply, Registered) or reply.service != spec.name:
            raise control.ControlError(f"unexpected answer to registering {spec.name!r}")
        if not verify_server_tag(
            key, reply.tag, spec.name, spec.type, server_nonce, client_nonce, self._binding
        ):
            raise FatalError("the server could not prove it knows the token: refusing it")
        state.compression = reply.compression if spec.compression else None
        host = reply.public_host
        if host in ("0.0.0.0", "::", ""):
            host = self.config.server_host
        state.remote_port = reply.public_port
        state.public = (
            f"[{host}]:{reply.public_port}" if ":" in host else f"{host}:{reply.public_port}"
        )
        log.info(
            "service registered",
            service=spec.name,
            type=spec.type,
            public=state.public,
            local=spec.local,
        )
        self.announce(state)

    async def _watch_control(
        self,
        channel: MuxStream,
        scope: anyio.CancelScope,
        replies: anyio.abc.ObjectSendStream[Registered | Error],
    ) -> None:
        """The control channel stays open for the session; its end ends the session.

        Answers to registrations made later (after a reload) go to `replies`.
        """
        try:
            while True:
                message = await control.receive_message(channel)
                if isinstance(message, Error) and message.code == control.SERVICE_CLOSED:
                    state = self.services.get(message.service or "")
                    if state is not None:
                        state.public = None
                    log.warning(
                        "service closed by the server",
                        service=message.service,
                        reason=message.message,
                    )
                elif isinstance(message, Registered) or (
                    isinstance(message, Error) and message.service is not None
                ):
                    replies.send_nowait(message)
                elif isinstance(message, Error):
                    log.warning("server error", code=message.code, message=message.message)
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.WouldBlock,
            control.ControlError,
        ):
            pass
        scope.cancel()

    # --- changes while running (hot reload) ---

    async def reload(self, config: ClientConfig) -> None:
        """Put a new config in force (see `muxtunnel.reload`)."""
        from muxtunnel.reload import reload_client

        await reload_client(self, config)

    async def add_service(self, spec: ServiceSpec) -> bool:
        """Start exposing `spec`; on a live session it is registered at once. False if refused."""
        state = self.services[spec.name] = ServiceState(spec)
        async with self._control_lock:
            channel, replies = self._channel, self._replies
            if channel is None or replies is None or not self.connected.is_set():
                return True  # registered with the others when the session (re)starts
            try:
                with anyio.fail_after(CONTROL_TIMEOUT_S):
                    await self._register(channel, state, self._nonces, True, replies)
            except (FatalError, RetryableError, control.ControlError, TimeoutError) as exc:
                log.error("service refused; left out until the next reload", error=str(exc))
                self.services.pop(spec.name, None)
                return False
            except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
                pass  # the session ended: the next one registers the service
        return True

    async def remove_service(self, name: str) -> None:
        """Stop exposing `name`; the server closes its public port and its visitors."""
        state = self.services.pop(name, None)
        async with self._control_lock:
            if state is None or self._channel is None or state.public is None:
                return
            try:
                await control.send_message(self._channel, Unregister(name))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        log.info("service removed", service=name)

    def update_local(self, spec: ServiceSpec) -> None:
        """A new local address for a service: visitors from now on go there."""
        state = self.services.get(spec.name)
        if state is not None:
            state.spec = spec
            log.info("service local address changed", service=spec.name, local=spec.local)

    def replace_services(self, specs: tuple[ServiceSpec, ...]) -> None:
        """Take `specs` as the services to register on the next session."""
        old = self.services
        self.services = {}
        for spec in specs:
            state = self.services[spec.name] = ServiceState(spec)
            if spec.name in old and old[spec.name].spec.remote_port == spec.remote_port:
                state.remote_port = old[spec.name].remote_port

    async def restart_session(self) -> None:
        """Close the session now; `run` reconnects (with the current config) after a short wait."""
        if self.session is not None and not self.session.closed:
            await self.session.aclose()

    async def _on_stream(self, stream: MuxStream) -> None:
        """One visitor. A bug here must cost this visitor only, never the session."""
        try:
            await self._serve_visitor(stream)
        except Exception:
            log.exception("visitor handler failed", stream=stream.stream_id)
            stream.reset()

    async def _serve_visitor(self, stream: MuxStream) -> None:
        try:
            with anyio.fail_after(HEADER_TIMEOUT_S):
                header = await control.read_visitor_header(stream)
        except (TimeoutError, control.ControlError, anyio.EndOfStream, anyio.BrokenResourceError):
            stream.reset()
            return
        state = self.services.get(header.service)
        if state is None or state.spec.type != header.type:
            log.warning("visitor for an unknown service", service=header.service)
            stream.reset()
            return
        spec = state.spec
        if spec.type == "udp":
            # At most udp_max_flows per service: the oldest flow makes room for a new one.
            while len(state.flows) >= self.config.udp_max_flows:
                state.flows.popitem(last=False)[1].reset()
            state.flows[stream.stream_id] = stream
            try:
                await serve_flow(
                    stream,
                    (spec.local_host, spec.local_port),
                    state.udp,
                    idle_s=self.config.udp_flow_idle_s,
                )
            finally:
                state.flows.pop(stream.stream_id, None)
            return
        peer = f"{header.peer_host}:{header.peer_port}"
        started = anyio.current_time()
        try:
            target = await connect(spec.local_host, spec.local_port, timeout_s=CONTROL_TIMEOUT_S)
        except TransportError as exc:
            log.warning(
                "local service unreachable",
                service=spec.name,
                local=spec.local,
                error=str(exc),
                peer=peer,
            )
            stream.reset()
            return
        state.connections += 1
        state.connections_total += 1
        log.info("visitor opened", service=spec.name, peer=peer)
        traffic = self.traffic_of(spec.name)
        meter = traffic.open(spec.name, peer)
        tunnel: anyio.abc.ByteStream = stream
        if state.compression:
            tunnel = CompressedStream(stream, spec.compression_level)
        try:
            result = await pipe(tunnel, MeteredStream(target, meter, receive_is_in=False))
        finally:
            state.connections -= 1
            traffic.close(meter)
        state.bytes_in += result.forward_bytes
        state.bytes_out += result.backward_bytes
        log.info(
            "visitor closed",
            service=spec.name,
            peer=peer,
            bytes_in=result.forward_bytes,
            bytes_out=result.backward_bytes,
            duration_s=round(anyio.current_time() - started, 3),
            error=result.error,
        )
