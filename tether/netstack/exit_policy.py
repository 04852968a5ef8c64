"""Where a peer's packet may go: another peer, the device itself, the host's network, or nowhere.

Every packet is classified by its destination address alone, once per distinct destination (the
verdict is cached in a dict keyed by the 4- or 16-byte address, so the steady-state cost is one
dict lookup). The verdicts:

* `PEER`: inside one of the device's tunnel subnets (its `Address` networks) and not one of its
  own addresses. Routed peer to peer through the device's AllowedIPs, never to the host, so a
  peer can reach another peer but the host's sockets never see tunnel addresses.
* `OWN`: one of the device's own tunnel addresses. Answers ping and nothing else.
* `HOST`: proxied through host sockets.
* `REFUSE`: refused by policy; the peer is told (TCP RST, ICMP administratively prohibited).
* `DROP`: silently dropped: multicast, limited/directed broadcast, a subnet's network and
  broadcast address. These are not addressed to a single host, so no ICMP error may be sent
  about them (RFC 1122 §3.2.2, RFC 4443 §2.4(e)); phones send plenty (mDNS, SSDP).

What is refused by default, and why: the host's loopback (127.0.0.0/8, ::1) and its own
addresses, because an exit that lets every phone reach services bound to the host (databases,
admin UIs, the UAPI of other daemons) is a privilege escalation; link-local (169.254.0.0/16,
which includes the 169.254.169.254 cloud metadata service whose credentials would leak, and
fe80::/10, which is ambiguous without an interface). `allow_local=True` lifts those three (tests
run servers on loopback). Always refused, whatever the switch: unspecified addresses (0.0.0.0/8,
`::`: connecting to them reaches the host itself on Linux), 240.0.0.0/4 (reserved), IPv4-mapped
and IPv4-compatible IPv6 (`::ffff:127.0.0.1` would reach IPv4 loopback through a dual-stack
socket, and RFC 4291 §2.5.5 says they never appear on the wire).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

PEER = 0
OWN = 1
HOST = 2
REFUSE = 3
DROP = 4
_LOCAL = 5  # internal: host-local destinations, HOST or REFUSE depending on allow_local

VERDICT_NAMES = ("peer", "own", "host", "refuse", "drop")

_CACHE_MAX = 65536  # distinct destinations remembered before the cache starts over

_V6_LOOPBACK = 1
_V6_MAPPED = 0xFFFF << 32


def _v4_net(network: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(network)
    return int(n.network_address), int(n.netmask)


_V4_RULES = (
    # (network, mask, verdict): first match wins, after own addresses and tunnel subnets.
    (*_v4_net("0.0.0.0/8"), REFUSE),
    (*_v4_net("127.0.0.0/8"), _LOCAL),
    (*_v4_net("169.254.0.0/16"), _LOCAL),
    (*_v4_net("224.0.0.0/4"), DROP),
    (*_v4_net("240.0.0.0/4"), REFUSE),  # class E; 255.255.255.255 is handled before
)


class ExitPolicy:
    """Classifies destinations. Reconfigured with `set_addresses` (the device's `Address` entries)
    and `set_host_addresses` (the host's own addresses, which the shell discovers)."""

    __slots__ = (
        "allow_local",
        "own",
        "own4",
        "own6",
        "_subnets4",
        "_subnets6",
        "_host",
        "_host_broadcast",
        "_cache",
    )

    def __init__(
        self,
        addresses: Iterable = (),
        *,
        allow_local: bool = False,
        host_addresses: Iterable = (),
        host_broadcasts: Iterable = (),
    ) -> None:
        self.allow_local = allow_local
        self._host: frozenset[bytes] = frozenset()
        self._host_broadcast: frozenset[bytes] = frozenset()
        self._cache: dict[bytes, int] = {}
        self.set_addresses(addresses)
        self.set_host_addresses(host_addresses, host_broadcasts)

    def set_addresses(self, addresses: Iterable) -> None:
        """The device's `Address` entries (ip_interface objects or strings like
        `192.168.90.1/24`). A bare network (`192.168.90.0/24`) gives a subnet and no own address,
        as in the configuration model."""
        own: set[bytes] = set()
        s4: list[tuple[int, int, int, int]] = []
        s6: list[tuple[int, int]] = []
        for a in addresses:
            iface = ipaddress.ip_interface(a)
            net = iface.network
            is_network = net.num_addresses > 2 and iface.ip == net.network_address
            if not is_network:
                own.add(iface.ip.packed)
            base, mask = int(net.network_address), int(net.netmask)
            if net.version == 4:
                bcast = int(net.broadcast_address) if net.prefixlen <= 30 else -1
                netaddr = base if net.prefixlen <= 30 else -1
                s4.append((base, mask, netaddr, bcast))
            else:
                s6.append((base, mask))
        self.own = frozenset(own)
        self.own4 = next((a for a in sorted(own) if len(a) == 4), None)
        self.own6 = next((a for a in sorted(own) if len(a) == 16), None)
        self._subnets4 = tuple(s4)
        self._subnets6 = tuple(s6)
        self._cache = {}

    def set_host_addresses(self, addresses: Iterable, broadcasts: Iterable = ()) -> None:
        """The host's own unicast addresses (refused unless `allow_local`) and its interfaces'
        directed broadcast addresses (always dropped). Accepts bytes, strings or ip_address."""
        self._host = frozenset(_packed(a) for a in addresses)
        self._host_broadcast = frozenset(_packed(a) for a in broadcasts)
        self._cache = {}

    def own_source(self, version: int) -> bytes | None:
        """An own address to originate ICMP from (time exceeded on the peer-to-peer path)."""
        return self.own4 if version == 4 else self.own6

    def classify(self, dst: bytes) -> int:
        """The verdict for a destination address (4 or 16 bytes)."""
        v = self._cache.get(dst)
        if v is None:
            v = self._classify(dst)
            if v == _LOCAL:
                v = HOST if self.allow_local else REFUSE
            cache = self._cache
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[dst] = v
        return v

    def valid_source(self, src: bytes) -> bool:
        """Whether a peer's packet names a single unicast host as its source, so that a flow for
        it can be answered. WireGuard already checked the source against the peer's AllowedIPs;
        this only keeps flows from being opened for sources a reply could never reach."""
        if len(src) == 4:
            return 0 < src[0] < 224 and src[0] != 127 and src != b"\xff\xff\xff\xff"
        a = int.from_bytes(src, "big")
        return src[0] != 0xFF and a > 1 and a >> 32 != 0xFFFF

    def _classify(self, dst: bytes) -> int:
        if dst in self.own:
            return OWN
        if len(dst) == 4:
            a = int.from_bytes(dst, "big")
            for base, mask, netaddr, bcast in self._subnets4:
                if a & mask == base:
                    return DROP if a in (netaddr, bcast) else PEER
            if a == 0xFFFFFFFF or dst in self._host_broadcast:
                return DROP
            for base, mask, verdict in _V4_RULES:
                if a & mask == base:
                    return verdict
            return _LOCAL if dst in self._host else HOST
        if len(dst) != 16:
            return DROP
        a = int.from_bytes(dst, "big")
        for base, mask in self._subnets6:
            if a & mask == base:
                return PEER
        if dst[0] == 0xFF:
            return DROP  # multicast
        if a >> 32 == 0xFFFF or (a >> 32 == 0 and a > _V6_LOOPBACK):
            return REFUSE  # IPv4-mapped, IPv4-compatible
        if a == 0:
            return REFUSE
        if a == _V6_LOOPBACK or a >> 118 == 0x3FA:  # ::1, fe80::/10
            return _LOCAL
        return _LOCAL if dst in self._host else HOST


def _packed(a) -> bytes:
    if isinstance(a, bytes | bytearray):
        return bytes(a)
    return ipaddress.ip_address(a).packed


def decrement_ttl(raw: bytes | memoryview) -> bytes:
    """A copy of an IP packet with its TTL/hop limit decremented, for the peer-to-peer path.

    The exit routes between peers as a router would, so forwarding loops (a peer whose AllowedIPs
    send a subnet address back into the tunnel) die out. IPv4's header checksum is updated
    incrementally (RFC 1624 eqn. 3: the TTL is the high byte of its word, so subtracting one from
    TTL adds 0x0100 to the checksum, with end-around carry). The caller checks TTL > 1 first.
    """
    b = bytearray(raw)
    if b[0] >> 4 == 4:
        b[8] -= 1
        c = ((b[10] << 8) | b[11]) + 0x0100
        c = (c & 0xFFFF) + (c >> 16)
        b[10], b[11] = c >> 8, c & 0xFF
    else:
        b[7] -= 1
    return bytes(b)
