"""Rendering the fleet's peers into a host's device file (sans-IO: a ConfigFile in, edits made).

A rendered peer is an ordinary `[Peer]` block with one comment line glued above it that starts
with `# fleet-managed` (a comment, so wg-quick and `wg setconf` never see it). The renderer owns
exactly those blocks: it adds the fleet's new peers, removes blocks whose peer left the fleet, and
puts back what a hand edit changed in a block (AllowedIPs, PresharedKey, or the whole block
deleted), reporting each restore so that the operator learns why the edit did not stick. An
Endpoint or PersistentKeepalive in a block is left alone: SaveConfig writes the endpoints the
device learned, and neither changes who may use which address. Blocks without the marker are
the host's own and are never touched, even when a fleet peer has the same public key (that is
reported, and the hand-written block wins on this host).

All edits go through the lossless editor, so the rest of the file stays byte-identical, and
rendering the same fleet state twice changes nothing (the second pass makes no edit).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from tether import keys
from tether.api.fleet.layout import FleetPeer
from tether.config.editor import ConfigFile
from tether.config.model import DeviceConfig, Peer

MARKER = "fleet-managed"


def marker_comment(entry: FleetPeer) -> str:
    """The comment glued above a rendered block (without the `# `)."""
    text = f"{MARKER} (etcd; change it through the API, hand edits are undone)"
    return f"{text}: {entry.comment}" if entry.comment else text


def managed_keys(cfg: ConfigFile) -> set[bytes]:
    """The public keys of the blocks that carry the marker."""
    out = set()
    sections = cfg.doc.sections
    prefix = "# " + MARKER
    peer_sections = [i for i, s in enumerate(sections) if s.name == "peer"]
    for peer, i in zip(cfg.config.peers, peer_sections, strict=True):
        above = sections[i - 1] if i > 0 else cfg.doc.preamble
        n = above.leading_comment_count()
        if n and any(line.raw.startswith(prefix) for line in above.body[-n:]):
            out.add(peer.public_key)
    return out


@dataclass
class Rendered:
    """What one rendering changed, by base64 public key."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # blocks a hand edit had changed or removed
    shadowed: list[str] = field(default_factory=list)  # fleet peers a hand-written block hides
    refused: dict[str, str] = field(default_factory=dict)  # fleet peers not rendered, and why
    managed: frozenset[bytes] = frozenset()  # the keys of the file's fleet blocks afterwards

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.restored)


def render(
    cfg: ConfigFile,
    wanted: Mapping[bytes, FleetPeer],
    *,
    known: Collection[bytes] = (),
    allocations: Mapping[str, bytes] | None = None,
    only: Collection[bytes] | None = None,
    managed: Collection[bytes] = (),
) -> Rendered:
    """Make `cfg`'s fleet-managed blocks exactly `wanted`. `known`: the keys rendered before
    (a wanted peer missing from the file is then a restore, not an add). `allocations`: the
    fleet's address keys (network text -> the peer it was allocated to). `only`: look at these
    keys alone (what changed in etcd since the last rendering of this very `cfg`, whose fleet
    blocks were `managed`): a 10,000-peer file costs an add what one peer costs."""
    out = Rendered()
    if only is None:
        managed = managed_keys(cfg)
        look = set(wanted) | managed
    else:
        managed, look = set(managed), set(only)
    check = _Check(cfg, managed, allocations)
    accepted = {}
    for key in sorted(look):
        entry = wanted.get(key)
        if entry is None:
            continue
        why = check.why(key, entry)
        if why is None:
            accepted[key] = entry
        else:
            out.refused[keys.encode(key)] = why
    for key in sorted(look & managed - accepted.keys()):
        cfg.remove_peer(key)
        out.removed.append(keys.encode(key))
    order = [k for k in wanted if k in accepted] if only is None else sorted(accepted)
    for key in order:
        entry = accepted[key]
        current = cfg.peer(key)
        if current is None:
            cfg.add_peer(_copy(entry), comment=marker_comment(entry))
            (out.restored if key in known else out.added).append(keys.encode(key))
        elif key not in managed:
            out.shadowed.append(keys.encode(key))
        elif (
            current.allowed_ips != entry.peer.allowed_ips
            or current.preshared_key != entry.peer.preshared_key
        ):
            cfg.update_peer(
                key,
                allowed_ips=list(entry.peer.allowed_ips),
                preshared_key=entry.peer.preshared_key,
            )
            out.restored.append(keys.encode(key))
    shadowed = {keys.decode(k) for k in out.shadowed}
    out.managed = frozenset((managed - look) | (accepted.keys() - shadowed))
    return out


@dataclass(frozen=True)
class LocalView:
    """What the API needs of a host's file after a rendering, without parsing it again: the
    bytes it describes, the configuration (a snapshot: its own list of peers, which the editor
    never changes in place), and which peers are the fleet's."""

    data: bytes
    config: DeviceConfig
    managed: frozenset[bytes]

    @classmethod
    def of(cls, data: bytes, cfg: ConfigFile, managed: frozenset[bytes]) -> LocalView:
        """The view of `cfg`, whose text is `data`, with `managed` its fleet blocks."""
        return cls(data, cfg.config.frozen(), managed)

    def hand_written(self) -> list[Peer]:
        """The peers written by hand into this host's file."""
        return [p for p in self.config.peers if p.public_key not in self.managed]


class _Check:
    """Which fleet peers this file may carry. Whoever can write a peer's key in etcd must not be
    able to route more than single addresses to it, take an address allocated to another peer,
    or pose as the device: an entry whose AllowedIPs are not host routes inside the device's
    Address subnets, whose addresses were not allocated to it (`allocations`; without them,
    hand-written peers and then lower public keys win, so every host decides alike), or that
    names the device's own key, is left out (`why` says why)."""

    def __init__(self, cfg: ConfigFile, managed: set[bytes], allocations) -> None:
        iface = cfg.config.interface
        self.own = iface.public_key  # a property that derives it: once, not per entry
        self.ranges = [
            (a.network.version, int(a.network.network_address), int(a.network.broadcast_address))
            for a in iface.addresses
        ]
        self.allocations = allocations
        self.taken = {
            n for p in cfg.config.peers if p.public_key not in managed for n in p.allowed_ips
        }

    def _inside(self, n) -> bool:
        ip = int(n.network_address)
        return any(v == n.version and lo <= ip <= hi for v, lo, hi in self.ranges)

    def why(self, key: bytes, entry: FleetPeer) -> str | None:
        nets = entry.peer.allowed_ips
        if key == self.own:
            return "it is the device's own public key"
        if any(n.prefixlen != n.max_prefixlen for n in nets):
            return "its AllowedIPs are not all single addresses"
        if not all(self._inside(n) for n in nets):
            return "its AllowedIPs are outside the device's Address subnets"
        allocations = self.allocations
        if any(n in self.taken for n in nets) or (
            allocations is not None and any(allocations.get(str(n)) != key for n in nets)
        ):
            return "an address of it belongs to another peer"
        self.taken.update(nets)
        return None


def _copy(entry: FleetPeer):
    """A Peer of its own for the file's model (the mirror's stays unshared)."""
    return replace(entry.peer, allowed_ips=list(entry.peer.allowed_ips))
