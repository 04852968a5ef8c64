"""Cryptokey routing table (paper §2): which peer owns an inner IP address.

It answers two questions per packet: which peer an outgoing packet's destination belongs to, and
whether a decrypted packet's source is one its sending peer may use. Both are a longest-prefix match
over all peers' AllowedIPs, so each prefix has exactly one owner.

Representation: per address family, one dict per prefix length mapping the prefix (the address
shifted right past its host bits) to its owner, probed from the longest length down. A lookup is one
`int.from_bytes` plus one dict probe per distinct prefix length present, so the usual tables (a
default route plus one host route per peer) cost two probes whatever the number of peers; the
worst case is bounded by the 33 (IPv4) or 129 (IPv6) possible lengths. A path-compressed binary
trie, as the kernel and wireguard-go use, pays one interpreted step per node on the path (about
log2(peers) for a hub of host routes), which in CPython is several times the cost of a dict probe.

Semantics follow wireguard-go's `AllowedIPs`:
- inserting a prefix that another peer owns moves it to the inserting peer;
- host bits of an inserted or removed prefix are ignored (the prefix is masked);
- `remove` only removes a prefix owned by the given peer;
- peers are opaque and compared by identity, as the Go table compares pointers;
- a peer's entries are listed in order of their most recent insertion, because wireguard-go keeps a
  per-peer list that an insert (even of a prefix the peer already owns) appends to; `wg show` and
  the UAPI `get` therefore print AllowedIPs in that order.
"""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworkLike = Network | ipaddress.IPv4Interface | ipaddress.IPv6Interface | str | tuple[Any, int]


class _Family:
    """All prefixes of one address width."""

    __slots__ = ("width", "by_length", "probes")

    def __init__(self, width: int) -> None:
        self.width = width
        self.by_length: dict[int, dict[int, object]] = {}
        # (shift, table) pairs, longest prefix first; rebuilt only when a length appears or
        # disappears, so lookups iterate a ready-made tuple.
        self.probes: tuple[tuple[int, dict[int, object]], ...] = ()

    def key(self, network: Network) -> int:
        return int(network.network_address) >> (self.width - network.prefixlen)

    def rebuild(self) -> None:
        self.probes = tuple(
            (self.width - length, self.by_length[length])
            for length in sorted(self.by_length, reverse=True)
        )


def as_network(prefix: NetworkLike) -> Network:
    """A prefix in any accepted form as a network, host bits masked off as wg does (config and
    UAPI hand over parsed networks, which pass through as they are)."""
    if isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return prefix
    if isinstance(prefix, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return prefix.network
    return ipaddress.ip_network(prefix, strict=False)


class AllowedIPs:
    """Longest-prefix-match table from IPv4/IPv6 prefixes to peers."""

    __slots__ = ("_v4", "_v6", "_entries")

    def __init__(self) -> None:
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        # id(peer) -> (peer, {network: None}); the dict keeps insertion order.
        self._entries: dict[int, tuple[object, dict[Network, None]]] = {}

    def _family(self, network: Network) -> _Family:
        return self._v4 if network.version == 4 else self._v6

    def _forget(self, owner: object, network: Network) -> None:
        record = self._entries[id(owner)]
        del record[1][network]
        if not record[1]:
            del self._entries[id(owner)]

    def insert(self, prefix: NetworkLike, peer: object) -> Network:
        """Give `prefix` (host bits masked off) to `peer`; returns the masked network."""
        if peer is None:
            raise ValueError("peer must not be None: None means 'no route' to lookup()")
        network = as_network(prefix)
        family = self._family(network)
        length = network.prefixlen
        table = family.by_length.get(length)
        if table is None:
            table = family.by_length[length] = {}
            family.rebuild()
        key = family.key(network)
        owner = table.get(key)
        if owner is not None:
            self._forget(owner, network)
        table[key] = peer
        record = self._entries.get(id(peer))
        if record is None:
            record = self._entries[id(peer)] = (peer, {})
        record[1][network] = None
        return network

    def remove(self, prefix: NetworkLike, peer: object) -> bool:
        """Drop `prefix` if `peer` owns it; returns whether anything was removed."""
        network = as_network(prefix)
        family = self._family(network)
        length = network.prefixlen
        table = family.by_length.get(length)
        if table is None:
            return False
        key = family.key(network)
        if table.get(key) is not peer or peer is None:
            return False
        self._drop(family, length, table, key)
        self._forget(peer, network)
        return True

    def _drop(self, family: _Family, length: int, table: dict[int, object], key: int) -> None:
        del table[key]
        if not table:
            del family.by_length[length]
            family.rebuild()

    def remove_by_peer(self, peer: object) -> None:
        # The table holds a reference to every peer it maps, so while a peer is present no other
        # live object can share its id().
        record = self._entries.pop(id(peer), None)
        if record is None:
            return
        for network in record[1]:
            family = self._family(network)
            length = network.prefixlen
            self._drop(family, length, family.by_length[length], family.key(network))

    def owner_of(self, prefix: NetworkLike) -> object | None:
        """Owner of the longest prefix, `prefix`'s own length or shorter, that contains all of
        `prefix`: the peer whose addresses an insert of `prefix` would take over (longer
        prefixes inside it keep theirs)."""
        network = as_network(prefix)
        family = self._family(network)
        address = int(network.network_address)
        floor = family.width - network.prefixlen
        for shift, table in family.probes:
            if shift >= floor:
                peer = table.get(address >> shift)
                if peer is not None:
                    return peer
        return None

    def entries_for_peer(self, peer: object) -> list[Network]:
        """The peer's prefixes, most recently inserted last (wireguard-go's order)."""
        record = self._entries.get(id(peer))
        if record is None:
            return []
        return list(record[1])

    def lookup(self, ip: bytes) -> object | None:
        """Owner of the longest prefix containing the 4- or 16-byte address `ip`, else None."""
        size = len(ip)
        if size == 4:
            probes = self._v4.probes
        elif size == 16:
            probes = self._v6.probes
        else:
            raise ValueError("an IP address is 4 or 16 bytes")
        address = int.from_bytes(ip)
        for shift, table in probes:
            peer = table.get(address >> shift)
            if peer is not None:
                return peer
        return None

    def __len__(self) -> int:
        return sum(len(record[1]) for record in self._entries.values())
