"""The store interface of the cluster registry: what Redis (and, later, etcd) must provide.

Rules every implementation keeps (the conformance suite in tests/cluster checks both we ship):

1. Compare-and-set, atomically. `acquire` takes a lease only if its key is free or already
   holds exactly that lease's holder (the same owner; the same group; the same node record);
   `renew` extends only leases still held by their holder and alive; `release` removes only
   what the caller holds. No interleaving of two nodes' calls can give one key two holders.
2. Leases end on their own. A lease not renewed within `lease_s` is gone: its key is free
   again (a group's key when its last member's lease ends). Time is the store's own clock.
3. All or nothing. `acquire(..., atomic=True)` takes every lease asked for or none of them.
4. Bounded and typed failure. When the store cannot be reached or does not answer within its
   timeout, a method raises `RegistryUnavailable` (nothing else); it never hangs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from muxtunnel.cluster._model import (
    Claim,
    ClaimKey,
    ClaimOutcome,
    Holding,
    Lease,
    Lost,
    Membership,
    NodeRecord,
)

__all__ = ["RegistryStore", "check_distinct", "lease_key"]


class RegistryStore(Protocol):
    """A shared store of leases: claims, group memberships and node records."""

    #: Where the store lives, for log lines and error messages (no password).
    description: str

    async def acquire(
        self, leases: Sequence[Lease], lease_s: float, *, atomic: bool = True
    ) -> ClaimOutcome:
        """Take each lease whose key is free or already its holder's, for `lease_s`.

        atomic: all of them or none (a registration's name, port and host together);
        otherwise each on its own, and `lost` lists those refused. Keys must be distinct.
        """
        ...

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        """Extend, to `lease_s` from now, each lease still held; the others come back as lost."""
        ...

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give up each lease still held (leave a group); how many were."""
        ...

    async def lookup(self, keys: Sequence[ClaimKey]) -> dict[ClaimKey, Holding]:
        """Who holds each key now; free keys are left out. One round trip for any number of
        keys: e.g. every location prefix of an HTTP visitor's path, to pick the longest held."""
        ...

    async def nodes(self) -> list[NodeRecord]:
        """The live node records, by node id."""
        ...

    async def holdings(self) -> list[tuple[ClaimKey, Holding]]:
        """Every held key, by key: for status, not for the visitor path (it walks them all)."""
        ...

    async def aclose(self) -> None:
        """Close connections; the store is not used after."""
        ...


def lease_key(lease: Lease) -> ClaimKey | tuple[str, str]:
    """The key a lease lives under (node records have a name space of their own)."""
    if isinstance(lease, Claim | Membership):
        return lease.key
    return ("node", lease.node_id)


def check_distinct(leases: Sequence[Lease]) -> None:
    """Refuse one key twice in one `acquire`: both would pass the check, then clash."""
    seen: set[ClaimKey | tuple[str, str]] = set()
    for lease in leases:
        key = lease_key(lease)
        if key in seen:
            raise ValueError(f"one acquire holds {key} twice")
        seen.add(key)
