"""Where a fleet keeps a device in etcd, and the values there (sans-IO: bytes in, values out).

Every key of device NAME starts with `<prefix>NAME/` (`--fleet-prefix`, default `/tetherctl/`):

| key | value (JSON) |
| --- | --- |
| `serial` | written by every change of the device; a write compares its mod revision, so the
  writes of all hosts are serialized like the edits under one host's directory lock |
| `peers/<public key>` | `{"public_key", "allowed_ips", "preshared_key", "comment"}` |
| `addresses/<network>` | `{"peer": <public key>}`: taken create-only in the transaction that
  writes the peer, so two hosts never hand out one address |
| `owners/<public key>` | the owner entry of `api/state.py` (secret hash, added, expiry, ...) |
| `released/<network>` | an address in quarantine (`api/state.py`) |
| `invites/<sha256 of code>` | an invite (`api/join/invites.py`) |

Values in etcd are input like a request: anyone with write access to etcd (or a bug in another
version) may put anything there. `parse_value` is strict and bounded; a value it refuses is
skipped with one log line by the mirror, and the daemon and the rendered file never see it. The
state entries are checked by the state file's own parser (`state.parse`), so an owner in etcd
obeys exactly the rules of one in `<device>.state.json`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import dataclass

from tether import keys
from tether.api.state import DeviceState, Owner, Release, StateError
from tether.api.state import parse as parse_state
from tether.config import store
from tether.config.model import Peer

DEFAULT_PREFIX = "/tetherctl/"
MAX_VALUE = 4096  # bytes: a peer's value is about 200
MAX_ALLOWED_IPS = 16
MAX_COMMENT = 200
_PREFIX = re.compile(r"/(?:[A-Za-z0-9._-]+/)*")
KINDS = ("peers", "addresses", "owners", "released", "invites")


class FleetValueError(ValueError):
    """A key or value in etcd that this version cannot use; one line naming the key."""


def check_prefix(text: str | None) -> str:
    """`--fleet-prefix`: slash-separated words starting and ending with `/`; ValueError."""
    prefix = DEFAULT_PREFIX if text is None or text == "" else text
    if len(prefix) > 100 or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"--fleet-prefix: {prefix[:40]!r}: expected /WORD/.../ (letters, digits, . _ -), "
            "starting and ending with /"
        )
    return prefix


@dataclass(frozen=True)
class Layout:
    """The keys of one device under one prefix."""

    prefix: str
    device: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        store.check_device_name(self.device)

    @property
    def root(self) -> bytes:
        """The prefix of every key of the device."""
        return f"{self.prefix}{self.device}/".encode("ascii")

    @property
    def serial(self) -> bytes:
        """The key every write of the device changes and compares."""
        return self.root + b"serial"

    def key(self, kind: str, name: str) -> bytes:
        """The key of entry `name` of `kind` (peers, addresses, owners, ...)."""
        return self.root + kind.encode("ascii") + b"/" + name.encode("ascii")

    def peer(self, public_key: bytes) -> bytes:
        """The key of a peer."""
        return self.key("peers", keys.encode(public_key))

    def address(self, network) -> bytes:
        """The key of an allocated address."""
        return self.key("addresses", str(network))

    def split(self, key: bytes) -> tuple[str, str] | None:
        """(kind, name) of a key of this device; None for `serial` and keys of no kind
        (FleetValueError for a key under the device that is not ASCII)."""
        if not key.startswith(self.root):
            return None
        rest = key[len(self.root) :]
        try:
            text = rest.decode("ascii")
        except UnicodeDecodeError:
            raise FleetValueError(f"{_show(key)}: the key is not ASCII") from None
        kind, sep, name = text.partition("/")
        if not sep or kind not in KINDS:
            return None
        return kind, name


# -- values ----------------------------------------------------------------------------------


def peer_value(peer: Peer, comment: str = "") -> bytes:
    """What a peer's key holds."""
    return _dump(
        {
            "public_key": keys.encode(peer.public_key),
            "allowed_ips": [str(n) for n in peer.allowed_ips],
            "preshared_key": keys.encode(peer.preshared_key) if peer.preshared_key else None,
            "comment": comment[:MAX_COMMENT],
        }
    )


def address_value(public_key: bytes) -> bytes:
    """What an address key holds: the peer it is allocated to."""
    return _dump({"peer": keys.encode(public_key)})


def state_value(kind: str, entry) -> bytes:
    """An owner, release or invite as its key holds it (the state file's JSON of it)."""
    return _dump(entry.to_json())


@dataclass(frozen=True)
class FleetPeer:
    """A peer as the fleet holds it."""

    peer: Peer
    comment: str


def parse_value(kind: str, name: str, value: bytes, where: str = "etcd"):
    """The value of a key of `kind` named `name`, strictly checked: a FleetPeer (peers), the
    peer key of an address (addresses), an Owner, Release or Invite; FleetValueError (one
    line: `where/kind/name: what`)."""
    label = f"{where}/{kind}/{repr(name[:60])[1:-1]}"  # a name is input: escaped, one line
    if len(value) > MAX_VALUE:
        raise FleetValueError(f"{label}: value of {len(value)} bytes (at most {MAX_VALUE})")
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FleetValueError(f"{label}: not a JSON value") from None
    if not isinstance(doc, dict):
        raise FleetValueError(f"{label}: expected a JSON object")
    if kind == "peers":
        return _peer(label, name, doc)
    if kind == "addresses":
        _fields(label, doc, {"peer"})
        _network_name(label, name)
        return _key(label, "peer", doc.get("peer"))
    if kind in ("owners", "released", "invites"):
        try:
            state = parse_state(_dump({"schema": 1, kind: {name: doc}}), label)
        except StateError as e:
            raise FleetValueError(str(e)) from None
        return next(iter(getattr(state, kind).values()))
    raise FleetValueError(f"{label}: unknown kind")


def _peer(label: str, name: str, doc: dict) -> FleetPeer:
    _fields(label, doc, {"public_key", "allowed_ips", "preshared_key", "comment"})
    public_key = _key(label, "public_key", doc.get("public_key"))
    if keys.encode(public_key) != name:
        raise FleetValueError(f"{label}: public_key differs from the key's name")
    nets = doc.get("allowed_ips")
    if not isinstance(nets, list) or not 1 <= len(nets) <= MAX_ALLOWED_IPS:
        raise FleetValueError(f"{label}: allowed_ips: expected 1 to {MAX_ALLOWED_IPS} networks")
    allowed = []
    for text in nets:
        try:
            net = ipaddress.ip_network(text) if isinstance(text, str) else None
        except ValueError:
            net = None
        if net is None or str(net) != text:
            raise FleetValueError(f"{label}: allowed_ips: {str(text)[:50]!r} is not a network")
        if net.prefixlen != net.max_prefixlen:  # the API hands out single addresses only
            raise FleetValueError(f"{label}: allowed_ips: {text} is not a single address")
        allowed.append(net)
    if len(set(allowed)) != len(allowed):
        raise FleetValueError(f"{label}: allowed_ips: a network is listed twice")
    psk = doc.get("preshared_key")
    psk = None if psk is None else _key(label, "preshared_key", psk)
    comment = doc.get("comment", "")
    if (
        not isinstance(comment, str)
        or len(comment) > MAX_COMMENT
        or not comment.isprintable()
        or not comment.isascii()
    ):
        raise FleetValueError(f"{label}: comment: expected one printable ASCII line")
    return FleetPeer(Peer(public_key, preshared_key=psk, allowed_ips=allowed), comment)


def _fields(label: str, doc: dict, allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise FleetValueError(f"{label}: unknown field {unknown[0][:40]!r}")


def _key(label: str, field: str, text) -> bytes:
    try:
        if isinstance(text, str) and len(text) == 44:
            raw = base64.b64decode(text, validate=True)
            if len(raw) == 32 and keys.encode(raw) == text:
                return raw
    except ValueError:
        pass
    raise FleetValueError(f"{label}: {field}: expected a 32-byte key in standard base64")


def _network_name(label: str, name: str) -> None:
    try:
        if str(ipaddress.ip_network(name)) == name:
            return
    except ValueError:
        pass
    raise FleetValueError(f"{label}: the key's name is not a network")


def _dump(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("ascii")


def _show(key: bytes) -> str:
    return repr(key[:80])[2:-1]


# -- state changes as etcd operations --------------------------------------------------------


def state_diff(layout: Layout, before: DeviceState, after: DeviceState) -> list[tuple]:
    """The keys to write (`("put", key, value)`) or delete (`("delete", key)`) so that etcd
    holds `after` where it held `before` (owners, released addresses, invites)."""
    ops: list[tuple] = []
    for kind in ("owners", "released", "invites"):
        old, new = getattr(before, kind), getattr(after, kind)
        for name, entry in new.items():
            if old.get(name) != entry:
                ops.append(("put", layout.key(kind, name), state_value(kind, entry)))
        for name in old.keys() - new.keys():
            ops.append(("delete", layout.key(kind, name)))
    return ops


__all__ = [
    "DEFAULT_PREFIX",
    "FleetPeer",
    "FleetValueError",
    "Layout",
    "Owner",
    "Release",
    "address_value",
    "check_prefix",
    "parse_value",
    "peer_value",
    "state_diff",
]
