"""Invites over the peer operations: what `POST /invites`, `GET|POST /join/<code>` and
`tetherctl invite create|list|revoke` do (the rules themselves are in `invites.py`).

Everything goes through the device's registry (`PeerService.state`/`update_state`, and inside
`PeerService.add` for a redemption), never around it, so a fleet store can replace the file. The
CLI and the daemon's API share this class: an invite made by `tetherctl invite create` while the
daemon runs is in the state file the API reads on its next request, and either may revoke it.

A redemption is an ordinary self-service add with an `InviteClaim`: the invite is checked and
used in the same locked registry update that allocates the peer's addresses (so across threads
and processes a single-use code admits exactly one peer), and given back if the add is undone
(the device could not apply it, the device file could not be written). Its peer is a
self-service peer like one added by anyone on an open API: counted against
`--api-self-service-max`, removed by the janitor if it never completes a handshake within
`--api-peer-expiry` (an invite is for a phone that will connect now, and an unused peer should
not hold an address forever), and owned by the secret returned with its config.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tether.api.errors import BadRequest, Gone, NotFound, PeerError, Unavailable
from tether.api.join import invites
from tether.api.join.invites import Invite, InviteError, JoinLinks
from tether.api.peers.clientconf import EndpointUnavailable
from tether.api.peers.ownership import SELF_SERVICE_GRANT, Added
from tether.api.peers.service import PeerService, check_endpoint_type
from tether.api.state import DeviceState

log = logging.getLogger("tether.api")

NO_INVITE = "no such invite (it was revoked, or the link is mistyped)"


def refusal(status: str, invite: Invite) -> PeerError | None:
    """Why an invite admits nobody now, as the error an add answers with (None: it admits)."""
    if status == invites.USED_UP:
        return Gone("this invite has been used already; ask for a new one")
    if status == invites.EXPIRED:
        when = datetime.datetime.fromtimestamp(invite.expires or 0, datetime.UTC)
        return Gone(f"this invite expired at {when:%Y-%m-%d %H:%M} UTC; ask for a new one")
    return None


class InviteClaim:
    """An invite being redeemed by an add (`peers.Claim`): checked and used in the add's locked
    registry update."""

    def __init__(self, digest: str) -> None:
        self.digest = digest

    def check(self, rs: DeviceState, now: float) -> PeerError | None:
        """NotFound or Gone when the invite admits nobody now (revoked meanwhile, used up by a
        racing redemption, expired)."""
        invite = rs.invites.get(self.digest)
        if invite is None:
            return NotFound(NO_INVITE)
        return refusal(invite.status(now), invite)

    def take(self, rs: DeviceState, now: float) -> None:
        """Use one of its uses."""
        invites.take(rs, self.digest, now)

    def give_back(self, rs: DeviceState) -> None:
        """The add was undone: the use is available again."""
        invites.give_back(rs, self.digest)


@dataclass(frozen=True)
class MadeInvite:
    """A new invite: its code and URL exist only here and in the answer to its maker."""

    device: str
    id: str
    code: str
    url: str
    invite: Invite


@dataclass(frozen=True)
class FoundInvite:
    """An invite a code names, with its device and status at the time of the look."""

    device: str
    digest: str
    invite: Invite
    status: str

    @property
    def id(self) -> str:
        """The invite's id (what `invite list` shows)."""
        return invites.invite_id(self.digest)


class Onboarding:
    """Invites of the devices a PeerService edits (see the module docstring)."""

    def __init__(
        self,
        service: PeerService,
        links: JoinLinks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.links = links or JoinLinks()
        self.clock = clock

    def create(
        self,
        device: str,
        *,
        uses: int = invites.DEFAULT_USES,
        expires_in: float = invites.DEFAULT_EXPIRY,
        endpoint_type: str = "any",
    ) -> MadeInvite:
        """Make an invite for `device` (a name the service serves). BadRequest for a bad
        option, or an endpoint type the server has no public address of (its redemptions would
        all fail)."""
        kind = check_endpoint_type(endpoint_type)
        if self.service.public is not None:
            try:
                self.service.public.host_for(kind)
            except EndpointUnavailable as e:
                raise BadRequest(str(e)) from None
        try:
            invites.check_uses(uses)
        except InviteError as e:
            raise BadRequest(str(e)) from None
        now = self.clock()

        def make(rs: DeviceState) -> str | InviteError:
            rs.prune(now)
            try:
                return invites.create(rs, now, uses=uses, expires_in=expires_in, endpoint_type=kind)
            except InviteError as e:
                return e  # returned, not raised: the pruning above is still worth writing

        code = self.service.update_state(device, make)
        if isinstance(code, InviteError):
            raise BadRequest(str(code))
        digest = invites.code_hash(code)
        invite = self.service.state(device).invites[digest]
        made = MadeInvite(device, invites.invite_id(digest), code, self.links.url(code), invite)
        log.info(
            "%s: invite %s made (%d use%s, expires %s, endpoint %s)",
            device,
            made.id,
            uses,
            "" if uses == 1 else "s",
            "never" if invite.expires is None else invite.expires,
            kind,
        )
        return made

    def list(self, device: str) -> list[tuple[str, Invite]]:
        """(id, invite) of every invite the device remembers, oldest first."""
        items = self.service.state(device).invites.items()
        return sorted(((invites.invite_id(d), inv) for d, inv in items), key=lambda x: x[1].created)

    def revoke(self, device: str, text: str) -> str | None:
        """Delete the invite `text` names (its id, code or join URL); its id, or None when no
        invite matches. Peers it admitted stay."""

        def drop(rs: DeviceState) -> str | None:
            digest = invites.by_id(rs.invites, text)
            if digest is None:
                return None
            rs.drop_invite(digest)
            return invites.invite_id(digest)

        revoked = self.service.update_state(device, drop)
        if revoked:
            log.info("%s: invite %s revoked", device, revoked)
        return revoked

    def find(self, device: str | None, code: str) -> FoundInvite | None:
        """The invite `code` names on `device`, or on any device the service serves (None)."""
        if not invites.is_code(code):
            return None
        names = [device] if device is not None else self.service.hub.device_names()
        now = self.clock()
        broken: Unavailable | None = None
        for name in names:
            try:
                state = self.service.state(name)
            except Unavailable as e:
                if device is not None:
                    raise
                # One device's unreadable state must not break every other device's links
                # (the bare /join/<code> is what invites print): look on, and only if the code
                # is nowhere else say that something is wrong.
                broken = broken or e
                continue
            digest = invites.find(state.invites, code)
            if digest is not None:
                invite = state.invites[digest]
                return FoundInvite(name, digest, invite, invite.status(now))
        if broken is not None:
            raise broken
        return None

    def redeem(
        self, device: str | None, code: str, public_key: bytes, *, client: str | None = None
    ) -> Added:
        """Add a peer with `public_key` through the invite `code`: NotFound for no such invite,
        Gone for one that admits nobody now, else what `PeerService.add` answers."""
        found = self.find(device, code)
        if found is None:
            raise NotFound(NO_INVITE)
        refused = refusal(found.status, found.invite)
        if refused is not None:
            raise refused
        return self.service.add(
            found.device,
            public_key,
            found.invite.endpoint_type,
            client=client,
            grant=SELF_SERVICE_GRANT,
            claim=InviteClaim(found.digest),
            note=f"invite {found.id}",
        )
