"""The client's side of one session: the control channel on its carrier (`_carrier`).

The client opens the control channel (the session's first stream), proves it holds each
service's token, and checks the server's proof in return. While the session lives the channel
stays open: the server may tell of a service it closed, and registrations made after a reload
get their answers through it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mux import MuxStream
from muxtunnel import control, resume
from muxtunnel.auth import (
    client_tag,
    derive_key,
    group_key_pair,
    group_proof,
    new_nonce,
    verify_server_tag,
)
from muxtunnel.client._state import (
    CONTROL_TIMEOUT_S,
    Announce,
    FatalError,
    RetryableError,
    ServiceState,
)
from muxtunnel.control import (
    Challenge,
    Error,
    Hello,
    MemberUpdate,
    Register,
    Registered,
    Unregister,
    VisitorKeys,
)
from muxtunnel.model import ClientConfig, Secret, ServiceSpec
from muxtunnel.specs import format_host_port
from muxtunnel.visitauth import seal_keys, visitor_key

__all__ = ["Control"]

log = structlog.get_logger("muxtunnel.client")

#: Registration errors that no retry can fix.
_FINAL_CODES = {
    control.AUTH_FAILED,
    control.PORT_NOT_ALLOWED,
    control.VERSION_MISMATCH,
    control.DOMAIN_NOT_ALLOWED,
    control.UNSUPPORTED,
}
#: Refusals that pass with time, so even a first session retries them.
_PASSING_CODES = {control.RATE_LIMITED, control.REGISTRY_UNAVAILABLE}
#: Answers to registrations made while the channel is watched (one at a time: a few will do).
_REPLY_BUFFER = 16

Reply = Registered | Error
_STREAM_ENDED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Control:
    """The control channel of one session: handshake, registrations, the server's notices.

    `config` is the one the session was opened with: what it says of the server (its host, TLS)
    cannot change without a new session. Tokens can, so each registration is given its own.
    """

    RESUMES = True  # its sessions may resume (`muxtunnel.resume`): a visitor's never do

    def __init__(
        self,
        channel: MuxStream,
        config: ClientConfig,
        binding: bytes,
        announce: Announce,
        instance: bytes = b"",
    ) -> None:
        self.channel, self._config, self._binding = channel, config, binding
        self._announce = announce
        #: This process's random id: a group member's reconnect takes its place back.
        self._instance = instance
        self._nonces = (b"", b"")
        #: What the server supports beyond version 1 (`Challenge.features`).
        self.features: tuple[str, ...] = ()
        #: `Challenge.resume_id`, and the `resume.Ticket` the first registration proves.
        self.resume_id = b""
        self.ticket: resume.Ticket | None = None
        #: Answers to `register_later`, passed on by `watch` (before it runs: read directly).
        self._send: MemoryObjectSendStream[Reply]
        self._replies: MemoryObjectReceiveStream[Reply]
        self._send, self._replies = anyio.create_memory_object_stream[Reply](_REPLY_BUFFER)
        self._lock = anyio.Lock()

    async def hello(self) -> None:
        """Open the exchange: our nonce out, the server's in."""
        client_nonce = new_nonce()
        name, resumable = socket.gethostname()[:255], self._config.resume and self.RESUMES
        hello = Hello(control.PROTOCOL_VERSION, client_nonce, name, resume=resumable)
        await control.send_message(self.channel, hello)
        reply = await control.receive_message(self.channel)
        if isinstance(reply, Error):
            raise FatalError(f"server refused the connection: {reply.message}")
        if not isinstance(reply, Challenge):
            raise control.ControlError(f"expected a challenge, got {type(reply).__name__}")
        self._nonces = reply.server_nonce, client_nonce
        self.features = reply.features
        self.resume_id = reply.resume_id if resumable else b""

    async def register(self, state: ServiceState, token: Secret | None, *, first: bool) -> None:
        """Register one service, before `watch` runs; updates `state` and announces it.

        Raises `FatalError` for what no retry fixes (a wrong token, a port the server does not
        allow; on the `first` session anything but a rate limit), `RetryableError` otherwise.
        """
        await self._register(state, token, first, None)

    async def register_later(self, state: ServiceState, token: Secret | None) -> None:
        """Register one more service once `watch` runs (after a reload); errors as above.

        `anyio.EndOfStream` (or a broken stream) if the session ends meanwhile.
        """
        async with self._lock:
            with anyio.fail_after(CONTROL_TIMEOUT_S):
                await self._register(state, token, True, self._replies)

    async def member_update(self, state: ServiceState) -> None:
        """Tell the server a group member's health or weight now (if it takes groups)."""
        group = state.spec.group
        if group is None or control.FEATURE_GROUPS not in self.features:
            return
        healthy = state.healthy
        update = MemberUpdate(
            state.spec.name, healthy is not False, group.weight, state.health_detail[:255]
        )
        try:
            await control.send_message(self.channel, update)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the session is ending: the next registration carries the news

    async def update_visitor_keys(self, state: ServiceState, token: Secret | None) -> None:
        """A private service's visitor tokens changed (a reload): send their keys; the service
        and its visitors stay up. Errors as `register_later`."""
        spec = state.spec
        if token is None:
            raise FatalError(f"service {spec.name!r} has no token")
        key = derive_key(token)
        async with self._lock:
            with anyio.fail_after(CONTROL_TIMEOUT_S):
                sealed = self._sealed_keys(spec, key)
                await control.send_message(self.channel, VisitorKeys(spec.name, sealed))
                reply = await self._replies.receive()
        if isinstance(reply, Error):
            raise RetryableError(f"service {spec.name!r}: {reply.message}")
        log.info("visitor tokens changed", service=spec.name, tokens=len(spec.visitor_tokens))

    def _sealed_keys(self, spec: ServiceSpec, key: bytes) -> bytes:
        """A private service's visitor keys, sealed for the server (b"" for a public one)."""
        if not spec.private:
            return b""
        keys = [visitor_key(token) for token in spec.visitor_tokens]
        return seal_keys(key, spec.name, *self._nonces, self._binding, keys)

    async def unregister(self, name: str) -> None:
        """Ask the server to stop exposing `name` (it closes the port and the visitors)."""
        async with self._lock:
            try:
                await control.send_message(self.channel, Unregister(name))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def _register(
        self,
        state: ServiceState,
        token: Secret | None,
        first: bool,
        replies: MemoryObjectReceiveStream[Reply] | None,
    ) -> None:
        spec = state.spec
        if token is None:
            raise FatalError(
                f"service {spec.name!r} has no token: set --token or a token in config"
            )
        key = derive_key(token)
        server_nonce, client_nonce = self._nonces
        group = spec.group.name if spec.group is not None else ""
        tag = client_tag(
            key, spec.name, spec.type, server_nonce, client_nonce, self._binding, group
        )
        # After a reconnect, ask for the port the server picked before, so visitors keep it.
        port = spec.remote_port or state.remote_port
        keys = self._sealed_keys(spec, key)
        request = Register.of(spec, tag, port, keys=keys, **self._membership(state))
        await control.send_message(self.channel, request)
        if replies is None:
            reply = await control.receive_message(self.channel)
        else:
            reply = await replies.receive()
        if isinstance(reply, Error):
            message = f"service {spec.name!r}: {reply.message}"
            tls = self._config.tls
            if reply.code == control.AUTH_FAILED and tls is not None and tls.insecure:
                message += (
                    " (with --insecure TLS this is also what a man in the middle looks like: "
                    "his certificate changes the channel binding; pin the server's with "
                    "--server-fingerprint)"
                )
            if reply.code in _FINAL_CODES or (first and reply.code not in _PASSING_CODES):
                raise FatalError(message)
            raise RetryableError(message)
        if not isinstance(reply, Registered) or reply.service != spec.name:
            raise control.ControlError(f"unexpected answer to registering {spec.name!r}")
        if not verify_server_tag(
            key, reply.tag, spec.name, spec.type, server_nonce, client_nonce, self._binding, group
        ):
            raise FatalError("the server could not prove it knows the token: refusing it")
        if spec.private and not reply.private:  # the session's end closes what it opened
            raise FatalError(
                f"service {spec.name!r}: the server does not know private services (it is "
                "older): refusing to expose it on a public port"
            )
        if (sid := self.resume_id) and self.ticket is None:  # the first registration's key
            nonces = server_nonce, client_nonce
            secret = resume.resume_key(key, spec.name, *nonces, self._binding, sid)
            self.ticket = resume.Ticket(sid, secret)
        state.member = reply.member
        state.agree_compression(reply.compression, reply.compression_level)
        host = reply.public_host
        if host in ("0.0.0.0", "::", ""):
            host = self._config.server_host
        state.remote_port = reply.public_port
        state.public = format_host_port(host, reply.public_port)
        state.urls = reply.urls
        if spec.http is not None and reply.urls:
            state.public = reply.urls[0]
        if spec.private:
            state.public = "private"
        log.info(
            "service registered",
            service=spec.name,
            type=spec.type,
            public=state.public,
            local=spec.local,
        )
        self._announce(state)

    def _membership(self, state: ServiceState) -> dict[str, object]:
        """A group member's fields; another service's: the instance id, if the server takes it."""
        group = state.spec.group
        if group is None:
            return {"instance": self._instance} if control.FEATURE_INSTANCE in self.features else {}
        if control.FEATURE_GROUPS not in self.features:
            raise FatalError(
                f"service {state.spec.name!r}: the server does not take load-balancing groups "
                "(it is older than this client); upgrade it, or leave out 'group'"
            )
        fields: dict[str, object] = {
            "healthy": state.healthy is not False,
            "instance": self._instance,
        }
        if group.token is not None:
            private, public = group_key_pair(group.token)
            fields["group_key"] = public
            fields["group_proof"] = group_proof(
                private, state.spec.name, group.name, *self._nonces, self._binding
            )
        return fields

    async def watch(self, on_closed: Callable[[str | None], None]) -> None:
        """Read the channel until it ends: the session ends with it.

        A service the server closed goes to `on_closed`; answers to `register_later` go to it.
        """
        send = self._send
        try:
            async with send:
                while True:
                    message = await control.receive_message(self.channel)
                    if isinstance(message, Error) and message.code == control.SERVICE_CLOSED:
                        on_closed(message.service)
                        log.warning(
                            "service closed by the server",
                            service=message.service,
                            reason=message.message,
                        )
                    elif isinstance(message, Registered) or (
                        isinstance(message, Error) and message.service is not None
                    ):
                        send.send_nowait(message)
                    elif isinstance(message, Error):
                        log.warning("server error", code=message.code, message=message.message)
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.WouldBlock,
            control.ControlError,
        ):
            pass
