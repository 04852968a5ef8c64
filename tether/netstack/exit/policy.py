"""Where a peer's packet may go: another peer, the device itself, the host's network, or nowhere.

Every packet is classified by its destination address alone, once per distinct destination (the
verdict is cached in a dict keyed by the 4- or 16-byte address, so the steady-state cost is one
dict lookup; any reconfiguration empties the cache). The verdicts:

* `PEER`: inside one of the device's tunnel subnets (its `Address` networks) and not one of its
  own addresses, with `PeerToPeer = yes`: routed to that peer through the device's AllowedIPs,
  never to the host. With `PeerToPeer = no` (the default) such a packet is refused.
* `OWN`: one of the device's own tunnel addresses. Answers ping and nothing else, whatever the
  `[Exit]` settings say.
* `HOST`: proxied through host sockets.
* `REFUSE`: refused by policy; the peer is told (TCP RST, ICMP administratively prohibited), so
  its connection fails at once instead of timing out.
* `DROP`: silently dropped: multicast, limited/directed broadcast, a subnet's network and
  broadcast address. These are not addressed to a single host, so no ICMP error may be sent
  about them (RFC 1122 §3.2.2, RFC 4443 §2.4(e)); phones send plenty (mDNS, SSDP).

The exit is offered to strangers, so by default it refuses everything that is not a host on the
Internet (DESIGN.md §3a):
- the host's loopback, its own addresses (discovered by the shell) and its public addresses
  (`--public-ipv4/--public-ipv6`: behind NAT they are not on any interface), and link-local
  (169.254/16, fe80::/10): services bound to the host are not for the peers;
- the cloud metadata services (169.254.169.254, fd00:ec2::254, Azure's 168.63.129.16, Alibaba's
  100.100.100.200, Oracle's 192.0.0.192), whose answers are the host's credentials;
- every block the IANA special-purpose registries mark as not globally reachable: RFC 1918,
  CGNAT 100.64/10, ULA fc00::/7, 192.0.0.0/24 (whole: its two "global" anycast addresses, PCP
  and TURN, are answered by the operator's own gateway, and PCP would let a peer open ports on
  it), the documentation ranges (TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20: nothing on the
  Internet answers there, so anything that does is on the operator's network), benchmarking
  (198.18/15, 2001:2::/48), 240/4, 2001::/23 but for its globally reachable parts (AMT,
  AS112, ORCHIDv2, drone DETs), 100::/64 discard-only, the 100:0:0:1::/64 dummy prefix, 5f00::/16
  SRv6 SIDs; plus deprecated site-local fec0::/10;
- IPv4 addresses in IPv6 clothing, judged as the IPv4 address they carry (DenyDestinations and
  AllowDestinations for IPv4 included; an IPv6 AllowDestinations never opens them): mapped
  ::ffff:0:0/96, SIIT-translated ::ffff:0:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96,
  6to4 2002::/16, Teredo 2001::/32 (the client address, inverted in the last 32 bits). The
  local-use NAT64 block 64:ff9b:1::/48 is refused whole: where the IPv4 address sits in it
  depends on the local translator's prefix length, which the exit cannot know.

`AllowDestinations` opens any of these but the unspecified addresses (0.0.0.0/8 and `::`:
connecting there reaches the host itself) and what is dropped (multicast, broadcast). A metadata
address is opened only when AllowDestinations names it exactly (a /32 or /128): a range that
happens to contain one (100.64.0.0/10, fd00::/8) does not. `DenyDestinations` refuses what it
names and wins over everything but the device's own addresses. `allow_local`
(`--allow-local-destinations yes`) lifts loopback, link-local and the host's own and public
addresses; the metadata addresses stay refused under it.
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
_WKP_NAT64 = 0x0064FF9B << 64  # 64:ff9b::/96 shifted right by 32
_TEREDO = 0x20010000  # 2001::/32 shifted right by 96
_6TO4 = 0x2002  # 2002::/16 shifted right by 112


def _net(network: str) -> tuple[int, int]:
    n = ipaddress.ip_network(network)
    return int(n.network_address), int(n.netmask)


# First match wins; they apply after own and tunnel addresses, drops, DenyDestinations, metadata,
# AllowDestinations and the host's addresses (see `_classify4`/`_classify6`).
_V4_RULES = tuple(
    (*_net(network), verdict)
    for network, verdict in (
        ("127.0.0.0/8", _LOCAL),
        ("169.254.0.0/16", _LOCAL),
        ("10.0.0.0/8", REFUSE),
        ("100.64.0.0/10", REFUSE),
        ("172.16.0.0/12", REFUSE),
        ("192.0.0.0/24", REFUSE),
        ("192.0.2.0/24", REFUSE),
        ("192.168.0.0/16", REFUSE),
        ("198.18.0.0/15", REFUSE),
        ("198.51.100.0/24", REFUSE),
        ("203.0.113.0/24", REFUSE),
        ("240.0.0.0/4", REFUSE),  # class E; 255.255.255.255 is dropped before
    )
)
_V6_RULES = tuple(
    (*_net(network), verdict)
    for network, verdict in (
        ("::1/128", _LOCAL),
        ("fe80::/10", _LOCAL),
        ("64:ff9b:1::/48", REFUSE),
        ("100::/64", REFUSE),
        ("100:0:0:1::/64", REFUSE),
        ("2001:3::/32", HOST),  # the globally reachable parts of 2001::/23 ...
        ("2001:4:112::/48", HOST),
        ("2001:20::/28", HOST),
        ("2001:30::/28", HOST),
        ("2001::/23", REFUSE),  # ... and the rest (PCP/TURN/SRP anycast, benchmarking, ORCHID)
        ("2001:db8::/32", REFUSE),
        ("3fff::/20", REFUSE),
        ("5f00::/16", REFUSE),
        ("fc00::/7", REFUSE),
        ("fec0::/10", REFUSE),
    )
)
METADATA = frozenset(
    ipaddress.ip_address(a).packed
    for a in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200", "192.0.0.192")
)


def embedded_ipv4(a: int) -> int | None:
    """The IPv4 address an IPv6 address (as an int) carries, if it is one of the forms that
    reach IPv4 hosts (mapped, SIIT, compatible, NAT64 well-known prefix, 6to4, Teredo)."""
    top = a >> 32
    if top in (0, 0xFFFF, 0xFFFF0000, _WKP_NAT64):
        return a & 0xFFFFFFFF
    if a >> 112 == _6TO4:
        return (a >> 80) & 0xFFFFFFFF
    if a >> 96 == _TEREDO:
        return (a & 0xFFFFFFFF) ^ 0xFFFFFFFF
    return None


def _nets(networks: Iterable, version: int) -> tuple[tuple[int, int], ...]:
    out = []
    for n in networks:
        net = ipaddress.ip_network(n, strict=False)
        if net.version == version:
            out.append((int(net.network_address), int(net.netmask)))
    return tuple(out)


def _within(a: int, nets: tuple[tuple[int, int], ...]) -> bool:
    return any(a & mask == base for base, mask in nets)


class ExitPolicy:
    """Classifies destinations. Reconfigured with `set_addresses` (the device's `Address`
    entries), `set_host_addresses` (the host's own addresses, which the shell discovers),
    `set_public_addresses` (the operator's `--public-ipv4/-ipv6`) and `set_rules` (the
    `[Exit]` section's AllowDestinations, DenyDestinations and PeerToPeer)."""

    __slots__ = (
        "allow_local",
        "peer_to_peer",
        "own",
        "own4",
        "own6",
        "_subnets4",
        "_subnets6",
        "_host",
        "_public",
        "_host_broadcast",
        "_allow4",
        "_allow6",
        "_allow_exact",
        "_deny4",
        "_deny6",
        "_cache",
    )

    def __init__(
        self,
        addresses: Iterable = (),
        *,
        allow_local: bool = False,
        host_addresses: Iterable = (),
        host_broadcasts: Iterable = (),
        public_addresses: Iterable = (),
        allow: Iterable = (),
        deny: Iterable = (),
        peer_to_peer: bool = False,
    ) -> None:
        self.allow_local = allow_local
        self._host: frozenset[bytes] = frozenset()
        self._host_broadcast: frozenset[bytes] = frozenset()
        self._cache: dict[bytes, int] = {}
        self.set_addresses(addresses)
        self.set_host_addresses(host_addresses, host_broadcasts)
        self.set_public_addresses(public_addresses)
        self.set_rules(allow, deny, peer_to_peer)

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

    def set_public_addresses(self, addresses: Iterable) -> None:
        """The host's public addresses as the operator named them (refused like its own)."""
        self._public = frozenset(_packed(a) for a in addresses)
        self._cache = {}

    def set_rules(self, allow: Iterable = (), deny: Iterable = (), peer_to_peer: bool = False):
        """AllowDestinations, DenyDestinations (networks or strings) and PeerToPeer."""
        allow, deny = list(allow), list(deny)
        self._allow4, self._allow6 = _nets(allow, 4), _nets(allow, 6)
        self._deny4, self._deny6 = _nets(deny, 4), _nets(deny, 6)
        self._allow_exact = frozenset(
            n.network_address.packed
            for n in (ipaddress.ip_network(x, strict=False) for x in allow)
            if n.prefixlen == n.max_prefixlen
        )
        self.peer_to_peer = bool(peer_to_peer)
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
            return self._classify4(dst, int.from_bytes(dst, "big"))
        if len(dst) == 16:
            return self._classify6(dst, int.from_bytes(dst, "big"))
        return DROP

    def _peer(self, a: int, deny: tuple) -> int:
        return PEER if self.peer_to_peer and not _within(a, deny) else REFUSE

    def _classify4(self, dst: bytes, a: int) -> int:
        for base, mask, netaddr, bcast in self._subnets4:
            if a & mask == base:
                return DROP if a in (netaddr, bcast) else self._peer(a, self._deny4)
        if a == 0xFFFFFFFF or a >> 28 == 0xE or dst in self._host_broadcast:
            return DROP
        if a >> 24 == 0 or _within(a, self._deny4):
            return REFUSE
        return self._open(dst, a, self._allow4, _V4_RULES)

    def _classify6(self, dst: bytes, a: int) -> int:
        for base, mask in self._subnets6:
            if a & mask == base:
                return self._peer(a, self._deny6)
        if dst[0] == 0xFF:
            return DROP  # multicast
        if a == 0 or _within(a, self._deny6):
            return REFUSE
        if a != _V6_LOOPBACK:
            v4 = embedded_ipv4(a)
            if v4 is not None:
                return HOST if self.classify(v4.to_bytes(4, "big")) == HOST else REFUSE
        return self._open(dst, a, self._allow6, _V6_RULES)

    def _open(self, dst: bytes, a: int, allow: tuple, rules: tuple) -> int:
        """The part both families share, once drops and denials are out of the way."""
        if dst in METADATA:
            return HOST if dst in self._allow_exact else REFUSE
        if _within(a, allow):
            return HOST
        if dst in self._host or dst in self._public:
            return _LOCAL
        for base, mask, verdict in rules:
            if a & mask == base:
                return verdict
        return HOST


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
