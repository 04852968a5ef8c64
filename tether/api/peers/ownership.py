"""Who a peer belongs to, and what an add hands back: the grants an add records, the owner checks
every route applies, and the `Claim` an add must use up (an invite). Shared by the peer
operations (`peers.py`), the routes (`app.py`), the janitor and the invites
(`join/onboarding.py`), none of which needs the others for this.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from tether.api.errors import PeerError
from tether.api.state import DeviceState, Owner
from tether.config.model import Peer

# Who a new peer belongs to (`PeerService.add(grant=...)`); None: nobody (the `peer` commands).
ADMIN_GRANT = "admin"  # made with the admin token: an owner secret, never expires
SELF_SERVICE_GRANT = "self-service"  # made by anyone: counted against the cap, may expire


@dataclass
class Added:
    """The result of an add: what the route returns to the client, the owner secret included
    once."""

    peer: Peer
    config: str  # the client config text (private key filled in only for server-made keys)
    secret: str | None = None  # the owner secret (shown once, stored only as a hash)


class Claim(Protocol):
    """Something an add must use up in the same locked registry update that allocates the
    peer's addresses (an invite, `join.InviteClaim`)."""

    def check(self, rs: DeviceState, now: float) -> PeerError | None:
        """Why the add may not happen (an error to raise), or None."""

    def take(self, rs: DeviceState, now: float) -> None:
        """Use it up (called once the addresses are allocated)."""

    def give_back(self, rs: DeviceState) -> None:
        """Undo `take` (the peer never went live)."""


def owner_applies(owner: Owner | None, peer: Peer | None) -> bool:
    """Whether an owner entry belongs to `peer` as it is in the file now: it names the
    addresses the peer has (an entry left behind by a hand edit never applies)."""
    if owner is None or peer is None:
        return False
    return tuple(str(n) for n in peer.allowed_ips) == owner.addresses


def owner_matches(owner: Owner | None, peer: Peer | None, secret_sha256: str) -> bool:
    """Whether a secret (by its hash) is the owner secret of `peer` as it is now."""
    if not owner_applies(owner, peer):
        return False
    return hmac.compare_digest(owner.secret_sha256, secret_sha256)
