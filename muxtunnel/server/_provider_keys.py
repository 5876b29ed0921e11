"""A provider's private services on the server: the visitor keys sealed in its registration,
and new ones after its reload (`VisitorKeys`), put in force at once (`_private.PrivateBook`
revokes the visits a dropped key made)."""

from __future__ import annotations

import structlog

from mux import MuxStream
from muxtunnel import control
from muxtunnel.control import Error, Registered, VisitorKeys
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.visitauth import open_keys

__all__ = ["ProviderKeys"]

log = structlog.get_logger("muxtunnel.server")


class ProviderKeys:
    """What `ClientSession` does with the visitor keys of the private services it registers."""

    host: Host
    id: int
    binding: bytes
    services: dict[str, ActiveService]

    def _registered(
        self, service: ActiveService, key: bytes, nonces: tuple[bytes, bytes], group: str = ""
    ) -> Registered:
        raise NotImplementedError

    def _open_keys(
        self, name: str, sealed: bytes, key: bytes, nonces: tuple[bytes, bytes]
    ) -> frozenset[bytes]:
        """The visitor keys a provider sealed with its service's key; `RegistrationError`."""
        try:
            return frozenset(open_keys(key, name, *nonces, self.binding, sealed))
        except ValueError as exc:
            raise RegistrationError(control.BAD_REQUEST, f"visitor keys refused: {exc}") from None

    async def _update_keys(
        self, channel: MuxStream, message: VisitorKeys, nonces: tuple[bytes, bytes]
    ) -> None:
        """A provider's reload changed the visitor tokens of a private service: the service and
        its visitors stay; visits granted with a key no longer listed are revoked at once."""
        name, service = message.service, self.services.get(message.service)
        try:
            if service is None or not service.private:
                raise RegistrationError(control.BAD_REQUEST, f"{name!r} is no private service")
            keys = self._open_keys(name, message.visitor_keys, service.key, nonces)
            if not keys and not self.host.private.policy_keys.get(name):
                raise RegistrationError(control.BAD_REQUEST, f"{name!r} has no visitor token")
        except RegistrationError as exc:
            await control.send_message(channel, Error(exc.code, exc.message, name))
            return
        service.visitor_keys = keys
        self.host.private.provider_keys_changed(name, keys)
        log.info("visitor keys changed", session=self.id, service=name, keys=len(keys))
        await control.send_message(channel, self._registered(service, service.key, nonces))
