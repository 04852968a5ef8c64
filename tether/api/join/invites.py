"""Invites (DESIGN.md §5a): codes that let whoever holds one add a peer, once or N times.

Sans-IO values and rules; the state file (`api/state.py`), the registry that stores it
(`api/registry.py`) and what uses it (`onboarding.py`, `routes.py`, the CLI) are elsewhere.

- A code is 24 random bytes (192 bits) in URL-safe base64, 32 characters, so it fits a short URL
  and a QR code and cannot be guessed. Only its SHA-256 is stored (like owner secrets, and for
  the same reason: a high-entropy secret needs no salt or slow hash), so a leaked state file
  holds no working invite. The code is shown once, when the invite is made.
- An invite's id is the first ten hex digits of that hash: what `invite list` shows and what
  `invite revoke` and `DELETE /invites/<id>` take, so an operator never needs the code again.
- A code from a request is looked up by comparing its hash with every stored hash in constant
  time (`find`), not by a dict lookup whose timing would depend on the stored hashes.
- An invite admits `uses` peers until `expires`. Redeeming (`take`) happens inside the add's
  locked registry update, after the address is allocated and before anything is written, so
  N racing phones on a single-use code admit exactly one, in this or any other process; an add
  that is undone afterwards gives its use back (`give_back`).
- A used-up or expired invite is kept for a day (`KEEP_DONE`) so that the join page can say so
  rather than "unknown", then pruned; a revoked one is deleted at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

CODE_BYTES = 24
CODE_LENGTH = 32  # URL-safe base64 of CODE_BYTES, no padding
_CODE = re.compile(r"[A-Za-z0-9_-]{32}")
ID_LENGTH = 10
_ID = re.compile(r"[0-9a-f]{10}")
_JOIN_URL = re.compile(r"(?:.*/)?join/([A-Za-z0-9_-]+)/?")
DEFAULT_USES = 1
MAX_USES = 10_000
DEFAULT_EXPIRY = 86400.0  # a day: long enough to pass a link on, short enough to forget
MAX_INVITES = 1000  # usable invites per device (each is a way in; more is a mistake)
KEEP_DONE = 86400  # seconds a used-up or expired invite is remembered, then pruned
MAX_PUBLIC_URL = 512

USABLE = "usable"
EXPIRED = "expired"
USED_UP = "used up"


class InviteError(ValueError):
    """An invite cannot be made or named as asked; the message is one line."""


def new_code() -> str:
    """A fresh invite code (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(CODE_BYTES)


def code_hash(code: str) -> str:
    """What is stored of a code: its SHA-256 in hex."""
    return hashlib.sha256(code.encode("utf-8", "surrogateescape")).hexdigest()


def invite_id(digest: str) -> str:
    """The short name of an invite (a prefix of its hash), for lists and revocation."""
    return digest[:ID_LENGTH]


def is_code(text: str) -> bool:
    """Whether `text` has the shape of a code; anything else is no invite, without hashing."""
    return bool(_CODE.fullmatch(text))


@dataclass(frozen=True)
class Invite:
    """One invite as the state file keeps it (the code itself is never kept)."""

    created: int  # Unix time
    expires: int | None  # Unix time it stops admitting; None: never
    uses: int  # peers it admits in all
    used: int  # peers it has admitted
    endpoint_type: str  # of the configs its peers get (any, ipv4, ipv6, domain)
    last_used: int | None = None  # Unix time of the latest redemption

    def left(self) -> int:
        """Peers it may still admit."""
        return max(0, self.uses - self.used)

    def status(self, now: float) -> str:
        """USABLE, EXPIRED or USED_UP at `now`."""
        if self.used >= self.uses:
            return USED_UP
        if self.expires is not None and self.expires <= now:
            return EXPIRED
        return USABLE

    def done_at(self) -> int | None:
        """When it stopped admitting (None while it may still): what pruning counts from."""
        if self.used >= self.uses:
            return self.last_used if self.last_used is not None else self.created
        return self.expires

    def to_json(self) -> dict:
        """The entry as the state file writes it."""
        return {
            "created": self.created,
            "expires": self.expires,
            "uses": self.uses,
            "used": self.used,
            "endpoint_type": self.endpoint_type,
            "last_used": self.last_used,
        }


def find(invites: Mapping[str, Invite], code: str) -> str | None:
    """The hash under which `code`'s invite is stored, or None. Every stored hash is compared,
    each in constant time, so the answer's timing says nothing about the stored hashes."""
    if not is_code(code):
        return None
    wanted = code_hash(code).encode("ascii")
    found = None
    for digest in invites:
        if hmac.compare_digest(digest.encode("ascii"), wanted):
            found = digest
    return found


def by_id(invites: Mapping[str, Invite], text: str) -> str | None:
    """The hash of the invite that `text` names: its id, its code, or a join URL holding the
    code (what the operator has at hand when revoking)."""
    text = text.strip()
    if _ID.fullmatch(text):
        matches = [d for d in invites if d.startswith(text)]
        return matches[0] if len(matches) == 1 else None
    m = _JOIN_URL.fullmatch(text)
    if m and not is_code(text):
        text = m.group(1)
    return find(invites, text)


def usable_count(invites: Mapping[str, Invite], now: float) -> int:
    """Invites that may still admit someone."""
    return sum(1 for inv in invites.values() if inv.status(now) == USABLE)


def create(state, now: float, *, uses: int, expires_in: float, endpoint_type: str) -> str:
    """Make an invite in `state` (a DeviceState being updated); returns the code, which exists
    nowhere else from here on. InviteError when the device holds MAX_INVITES usable ones."""
    check_uses(uses)
    if usable_count(state.invites, now) >= MAX_INVITES:
        raise InviteError(
            f"this device has {MAX_INVITES} usable invites already; revoke some first"
        )
    while True:
        code = new_code()
        digest = code_hash(code)
        if not any(d.startswith(invite_id(digest)) for d in state.invites):
            break  # ids stay unique (a clash of 40 bits is rare, but then we draw again)
    expires = int(now + expires_in + 0.999) if expires_in > 0 else None
    state.set_invite(digest, Invite(int(now), expires, uses, 0, endpoint_type))
    return code


def check_uses(uses: int) -> int:
    """`--uses N`: 1 to MAX_USES."""
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
        raise InviteError(f"--uses: expected a whole number from 1 to {MAX_USES}")
    return uses


def parse_uses(text: str | int | None) -> int:
    """`--uses` (or the `uses` field of `POST /invites`) as text; InviteError otherwise."""
    if text is None or text == "":
        return DEFAULT_USES
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InviteError(f"--uses: {str(text)[:40]!r} is not a whole number") from None
    return check_uses(value)


def take(state, digest: str, now: float) -> str:
    """Use the invite stored under `digest` once, if it is usable; returns its status before
    (USABLE when this call used it), or "" when there is no such invite."""
    inv = state.invites.get(digest)
    if inv is None:
        return ""
    status = inv.status(now)
    if status == USABLE:
        state.set_invite(digest, dataclasses.replace(inv, used=inv.used + 1, last_used=int(now)))
    return status


def give_back(state, digest: str) -> None:
    """Undo one `take` (the peer it admitted never went live). A revoked invite stays
    revoked."""
    inv = state.invites.get(digest)
    if inv is not None and inv.used > 0:
        state.set_invite(digest, dataclasses.replace(inv, used=inv.used - 1))


def prune(state, now: float) -> None:
    """Forget invites that stopped admitting more than KEEP_DONE seconds ago."""
    for digest, inv in list(state.invites.items()):
        done = inv.done_at()
        if done is not None and done + KEEP_DONE <= now:
            state.drop_invite(digest)


# -- the join URL --------------------------------------------------------------------------------


def parse_public_url(text: str | None) -> str | None:
    """`--api-public-url URL`: where phones reach the API when a reverse proxy fronts it
    (`https://vpn.example.org` or `https://example.org/vpn`); returned without a trailing
    slash. ValueError with a one-line message for anything a join URL cannot be built on."""
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    problem = None
    if len(raw) > MAX_PUBLIC_URL:
        problem = f"longer than {MAX_PUBLIC_URL} characters"
    elif not raw.isascii() or not raw.isprintable() or " " in raw:
        problem = "only printable ASCII without spaces"
    else:
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            parts, problem = None, "not a URL"
        if parts is not None and problem is None:
            if parts.scheme not in ("http", "https"):
                problem = "must start with https:// (or http://)"
            elif not parts.hostname:
                problem = "names no host"
            elif parts.username is not None or parts.password is not None:
                problem = "must not hold a user name or password"
            elif parts.query or parts.fragment or "?" in raw or "#" in raw:
                problem = "must not have a query or fragment"
    if problem:
        raise ValueError(f"--api-public-url: {raw[:80]!r}: {problem}")
    return raw.rstrip("/")


def base_url(
    public_url: str | None,
    *,
    domain: str | None,
    ipv4: str | None,
    ipv6: str | None,
    listen_host: str | None,
    listen_port: int | None,
) -> str | None:
    """Where the join page is reached from outside: `--api-public-url`, else the public name or
    address with the API's port over plain HTTP; None when nothing names it."""
    if public_url:
        return public_url
    if not listen_port:
        return None
    host = domain or ipv4 or (f"[{ipv6}]" if ipv6 else None)
    if host is None and listen_host and listen_host not in ("*", "0.0.0.0", "::"):
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
    return f"http://{host}:{listen_port}" if host else None


@dataclass
class JoinLinks:
    """Turns codes into the URLs that `invite create` and `POST /invites` print. `base` may be
    filled in after the server is bound (a port chosen by the kernel)."""

    base: str | None = None

    def url(self, code: str) -> str:
        """The join URL of a code (a path alone when nothing names the server)."""
        return f"{self.base or ''}/join/{code}"
