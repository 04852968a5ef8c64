"""What the API remembers about a device beyond its wg-quick file (sans-IO: values in, bytes out).

The device file stays the truth about peers; this is the API's own bookkeeping, kept beside it as
`<config-dir>/<device>.state.json` (see `registry.py` for the file and its locking):

- owners: for every peer added through the API, the SHA-256 of its owner secret, when it was
  added, whether an anonymous caller added it (self-service: counted against the pool cap and
  expired if it never completes a handshake) and the AllowedIPs it was given. An owner entry
  authorizes only while a peer with that key *and those addresses* is in the file, so an entry
  left behind by a hand edit can never authorize a later peer that reuses the key;
- released: addresses (networks) freed by a removal, with the time they were freed and the end
  of their quarantine, so that the allocator does not hand them to the next peer at once (its
  old flows' packets could still reach it) and so that this survives restarts;
- invites: for every invite (`join/invites.py`), the SHA-256 of its code, when it was made, when it
  expires, how many peers it admits and has admitted, and the endpoint type of their configs.

Why a plain SHA-256 of the secret (no salt, no key): the secret is 256 random bits made by the
server, so nobody can search for it from its hash; salts and slow hashes protect low-entropy
passwords, and a server-side key would only move the problem to another file beside this one.

The parser is strict: an unknown key, a wrong type or a newer schema is an error naming the file
and the JSON path, and the caller must never replace such a file (it may hold owners a newer
version wrote, or a person's half-finished edit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tether.api.join.invites import MAX_USES, Invite
from tether.api.join.invites import prune as prune_invites
from tether.api.peers.clientconf import ENDPOINT_TYPES

SCHEMA = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")  # 32 bytes in standard base64
RELEASE_SLACK = 10  # seconds
MAX_TIME = 2**40  # seconds; far beyond any real clock, small enough to stay an exact float


class StateError(ValueError):
    """The state file cannot be used as it is; the message is one line naming file and path."""


def secret_hash(secret: str) -> str:
    """What is stored of an owner secret: its SHA-256 (why no salt: the module docstring)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Owner:
    """The owner entry of a peer the API added (see the module docstring)."""

    secret_sha256: str
    added: int  # Unix time
    self_service: bool
    expires: int | None  # Unix time after which a never-handshaken peer is removed; None: never
    addresses: tuple[str, ...]  # the AllowedIPs the peer was given, as text

    def to_json(self) -> dict:
        """The entry as its file writes it."""
        return {
            "secret_sha256": self.secret_sha256,
            "added": self.added,
            "self_service": self.self_service,
            "expires": self.expires,
            "addresses": list(self.addresses),
        }


@dataclass(frozen=True)
class Release:
    """A freed address in quarantine, so that no new peer gets it while old traffic may arrive."""

    released: int  # Unix time the address left its peer
    until: int  # end of its quarantine
    self_service: bool  # it belonged to a self-service peer (counts against the pool cap)

    def to_json(self) -> dict:
        """The entry as its file writes it."""
        return {"released": self.released, "until": self.until, "self_service": self.self_service}


@dataclass
class DeviceState:
    """One device's API state. Treat an instance as immutable once shared: writers work on
    `copy()` (cheap: the entries themselves are frozen)."""

    owners: dict[str, Owner] = field(default_factory=dict)  # base64 public key -> owner
    released: dict[str, Release] = field(default_factory=dict)  # network text -> release
    invites: dict[str, Invite] = field(default_factory=dict)  # SHA-256 of the code -> invite
    changed: bool = field(default=False, compare=False)
    touched: set[str] = field(default_factory=set, compare=False)  # owner keys set or dropped

    def copy(self) -> DeviceState:
        """A copy a writer may change (the entries are frozen, so this is cheap)."""
        return DeviceState(dict(self.owners), dict(self.released), dict(self.invites))

    # -- owners --------------------------------------------------------------------------------

    def set_owner(self, key: str, owner: Owner) -> None:
        """Record (or replace) a peer's owner entry, marking the state changed."""
        self.owners[key] = owner
        self.changed = True
        self.touched.add(key)

    def forget(self, key: str) -> Owner | None:
        """Drop a peer's owner entry (the peer left the file); returns it, or None."""
        owner = self.owners.pop(key, None)
        if owner is not None:
            self.changed = True
            self.touched.add(key)
        return owner

    def clear_expiry(self, key: str) -> None:
        """The peer has completed a handshake: it is used and never expires now."""
        owner = self.owners.get(key)
        if owner is not None and owner.expires is not None:
            self.set_owner(key, dataclasses.replace(owner, expires=None))

    def self_service_count(self, now: float) -> int:
        """Self-service peers plus the addresses self-service peers freed that are still in
        quarantine: what anonymous callers hold of the pool right now."""
        live = sum(1 for o in self.owners.values() if o.self_service)
        held = sum(1 for r in self.released.values() if r.self_service and r.until > now)
        return live + held

    # -- invites -------------------------------------------------------------------------------

    def set_invite(self, digest: str, invite: Invite) -> None:
        """Record (or replace) an invite, marking the state changed."""
        self.invites[digest] = invite
        self.changed = True

    def drop_invite(self, digest: str) -> Invite | None:
        """Delete an invite (revoked, or pruned); returns it, or None."""
        invite = self.invites.pop(digest, None)
        if invite is not None:
            self.changed = True
        return invite

    # -- released addresses --------------------------------------------------------------------

    def release(self, networks, now: float, quarantine: float, self_service: bool) -> None:
        """Start (or extend) the quarantine of `networks`; drop quarantines that have ended.
        A release seen twice within seconds (the API's, then the daemon's as it applies the
        same edit) is written once."""
        if quarantine <= 0:
            return
        until = int(now + quarantine + 0.999)
        for net in networks:
            text = str(net)
            old = self.released.get(text)
            if old is None or old.until + RELEASE_SLACK < until:
                self.released[text] = Release(int(now), until, self_service)
                self.changed = True
        self.prune(now)

    def prune(self, now: float) -> None:
        """Drop quarantines that have ended and invites long done, so that the file does not
        grow forever."""
        ended = [text for text, r in self.released.items() if r.until <= now]
        for text in ended:
            del self.released[text]
        if ended:
            self.changed = True
        prune_invites(self, now)

    def quarantined(self, now: float) -> set[str]:
        """The addresses still in quarantine, which the allocator holds back."""
        return {text for text, r in self.released.items() if r.until > now}


# -- the file format ---------------------------------------------------------------------------


def owner_line(key: str, owner: Owner) -> bytes:
    """One owner's line of the file; the registry keeps these between writes so that a write of
    10,000 owners does not encode every one again."""
    return f"{json.dumps(key)}: {_compact(owner.to_json())}".encode("ascii")


def render(state: DeviceState, owner_lines: Iterable[bytes] | None = None) -> bytes:
    """The file's bytes: one owner per line, so that a person can read and diff it.
    `owner_lines` are `owner_line` of every owner, in any order, when the caller keeps them
    between writes: with 10,000 owners, encoding all of them again for every add would cost
    more than the add itself."""
    if owner_lines is None:
        owner_lines = [owner_line(k, o) for k, o in state.owners.items()]
    released = [
        f"{json.dumps(text)}: {_compact(r.to_json())}".encode("ascii")
        for text, r in state.released.items()
    ]
    invites = [
        f"{json.dumps(digest)}: {_compact(inv.to_json())}".encode("ascii")
        for digest, inv in state.invites.items()
    ]
    parts = [b'{"schema": %d,\n"owners": {' % SCHEMA]
    _block(parts, owner_lines)
    parts.append(b'},\n"released": {')
    _block(parts, released)
    parts.append(b'},\n"invites": {')
    _block(parts, invites)
    parts.append(b"}}\n")
    return b"".join(parts)


def _compact(value) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=True)


def _block(parts: list[bytes], lines: Iterable[bytes]) -> None:
    """Append `lines` as the members of a JSON object, one per line."""
    body = b",\n".join(lines)
    if body:
        parts += [b"\n", body, b"\n"]


def parse(data: bytes, name: str) -> DeviceState:
    """Strictly parse a state file; StateError (one line, `name: where: what`) otherwise."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise StateError(f"{name}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise StateError(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise StateError(f"{name}: not valid JSON: nested too deeply") from None
    where = _Where(name)
    top = where.obj(doc, "")
    schema = top.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA:
            where.fail("schema", f"{schema} is newer than this tetherctl understands ({SCHEMA})")
        where.fail("schema", f"expected {SCHEMA}")
    where.keys(top, "", {"schema", "owners", "released", "invites"})
    state = DeviceState()
    for key, raw in where.obj(top.get("owners", {}), "owners").items():
        path = f"owners[{key!r}]"
        if not _KEY.fullmatch(key):
            where.fail(path, "not a public key (32 bytes in standard base64)")
        state.owners[key] = _owner(where, where.obj(raw, path), path)
    for text, raw in where.obj(top.get("released", {}), "released").items():
        path = f"released[{text!r}]"
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            where.fail(path, "not an IP network")
        if str(net) != text:
            where.fail(path, f"not in canonical form (expected {str(net)!r})")
        obj = where.obj(raw, path)
        where.keys(obj, path, {"released", "until", "self_service"})
        state.released[text] = Release(
            where.time(obj, path, "released"),
            where.time(obj, path, "until"),
            where.bool(obj, path, "self_service"),
        )
    for digest, raw in where.obj(top.get("invites", {}), "invites").items():
        path = f"invites[{digest!r}]"
        if not _HEX64.fullmatch(digest):
            where.fail(path, "not the SHA-256 of a code (64 lowercase hex digits)")
        state.invites[digest] = _invite(where, where.obj(raw, path), path)
    return state


def _invite(where: _Where, obj: dict, path: str) -> Invite:
    where.keys(obj, path, {"created", "expires", "uses", "used", "endpoint_type", "last_used"})
    kind = obj.get("endpoint_type")
    if kind not in ENDPOINT_TYPES:
        where.fail(f"{path}.endpoint_type", f"expected one of {', '.join(ENDPOINT_TYPES)}")
    uses = where.count(obj, path, "uses", 1, MAX_USES)
    used = where.count(obj, path, "used", 0, uses)
    expires, last_used = obj.get("expires"), obj.get("last_used")
    return Invite(
        where.time(obj, path, "created"),
        None if expires is None else where.time(obj, path, "expires"),
        uses,
        used,
        kind,
        None if last_used is None else where.time(obj, path, "last_used"),
    )


def _owner(where: _Where, obj: dict, path: str) -> Owner:
    where.keys(obj, path, {"secret_sha256", "added", "self_service", "expires", "addresses"})
    digest = obj.get("secret_sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        where.fail(f"{path}.secret_sha256", "expected 64 lowercase hex digits")
    expires = obj.get("expires")
    addresses = obj.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        where.fail(f"{path}.addresses", "expected a non-empty list of networks")
    nets = []
    for text in addresses:
        try:
            nets.append(str(ipaddress.ip_network(text)))
        except (ValueError, TypeError):
            where.fail(f"{path}.addresses", f"{text!r} is not an IP network")
    return Owner(
        digest,
        where.time(obj, path, "added"),
        where.bool(obj, path, "self_service"),
        None if expires is None else where.time(obj, path, "expires"),
        tuple(nets),
    )


class _Where:
    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, path: str, message: str):
        raise StateError(f"{self.name}: {path or 'top level'}: {message}")

    def obj(self, value, path: str) -> dict:
        if not isinstance(value, dict):
            self.fail(path, "expected a JSON object")
        return value

    def keys(self, obj: dict, path: str, allowed: set[str]) -> None:
        unknown = sorted(set(obj) - allowed)
        if unknown:
            self.fail(path, f"unknown key {unknown[0]!r}")
        missing = sorted(allowed - set(obj) - {"owners", "released", "invites"})
        if missing:
            self.fail(path, f"missing key {missing[0]!r}")

    def time(self, obj: dict, path: str, key: str) -> int:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TIME:
            self.fail(f"{path}.{key}", "expected a Unix time in whole seconds")
        return value

    def count(self, obj: dict, path: str, key: str, low: int, high: int) -> int:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(f"{path}.{key}", f"expected a whole number from {low} to {high}")
        return value

    def bool(self, obj: dict, path: str, key: str) -> bool:
        value = obj.get(key)
        if not isinstance(value, bool):
            self.fail(f"{path}.{key}", "expected true or false")
        return value
