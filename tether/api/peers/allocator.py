"""Tunnel address allocation for new peers: the lowest free host address of each subnet.

A device's Address lines name its subnets (`192.168.90.1/24, fd00:90::1/64`). A new peer gets
one /32 from every IPv4 subnet and one /128 from every IPv6 subnet. An address is taken if it is
the subnet's network or broadcast address, the device's own address, or covered by any peer's
AllowedIPs (a peer routing a whole /28 takes all of it).

The original tool scanned every address of the subnet against every peer per request. Here each
subnet keeps the covered ranges as sorted, merged intervals plus a cursor: allocation binary-
searches for the first gap at or after the cursor, so a run of adds costs O(log n) each, and a
removed peer's addresses are offered again through a min-heap of freed candidates.

Addresses in quarantine (freed recently, see `state.py`) are `hold`-ed: covered like a peer's
AllowedIPs until the hold is dropped, at which point they join the freed candidates.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Exhausted(Exception):
    """No free address is left in a subnet."""


class SubnetPool:
    """The free and taken addresses of one subnet, kept as merged intervals so that an add costs
    O(log n) even on a device with thousands of peers."""

    def __init__(self, subnet: Network, own: ipaddress.IPv4Address | ipaddress.IPv6Address | None):
        self.subnet = subnet
        first, last = int(subnet.network_address), int(subnet.broadcast_address)
        if subnet.num_addresses > 2:
            # never the network address (IPv6: the subnet-router anycast) nor IPv4's broadcast
            first += 1
            if subnet.version == 4:
                last -= 1
        self.first, self.last = first, last
        self.own = int(own) if own is not None and own in subnet else None
        # coverage counts: many peers may cover the same address (the file allows overlaps)
        self._hosts: dict[int, int] = {}
        self._ranges: dict[tuple[int, int], int] = {}
        self._starts: list[int] = []  # merged covered intervals, sorted (starts and ends)
        self._ends: list[int] = []
        self._dirty = False
        self._cursor = first
        self._freed: list[int] = []

    # -- coverage ------------------------------------------------------------------------------

    def cover(self, network: Network) -> None:
        """Mark a network taken (a peer's AllowedIPs, a held address); counted, since peers may
        overlap."""
        lo, hi = self._clip(network)
        if lo > hi:
            return
        if lo == hi:
            self._hosts[lo] = self._hosts.get(lo, 0) + 1
        else:
            self._ranges[(lo, hi)] = self._ranges.get((lo, hi), 0) + 1
        self._add_interval(lo, hi)

    def uncover(self, network: Network) -> None:
        """Undo one `cover`; addresses no longer covered become candidates again."""
        lo, hi = self._clip(network)
        if lo > hi:
            return
        if lo == hi:
            count = self._hosts.get(lo, 0) - 1
            if count > 0:
                self._hosts[lo] = count
                return
            self._hosts.pop(lo, None)
        else:
            count = self._ranges.get((lo, hi), 0) - 1
            if count > 0:
                self._ranges[(lo, hi)] = count
                return
            self._ranges.pop((lo, hi), None)
        if lo == hi and not self._ranges and not self._dirty:
            self._split(lo)  # only host routes are covered: cut the one address out
        else:
            self._dirty = True  # merged intervals are rebuilt lazily, on the next look
        if hi - lo < 4096:
            for addr in range(lo, hi + 1):
                heapq.heappush(self._freed, addr)
        else:
            self._cursor = min(self._cursor, lo)

    def _clip(self, network: Network) -> tuple[int, int]:
        if network.version != self.subnet.version:
            return 1, 0
        lo = max(int(network.network_address), self.first)
        hi = min(int(network.broadcast_address), self.last)
        return lo, hi

    def _add_interval(self, lo: int, hi: int) -> None:
        if self._dirty:
            return  # will be rebuilt from the counts anyway
        i = bisect.bisect_right(self._starts, lo)
        if i and self._ends[i - 1] >= lo - 1:
            i -= 1
            lo = min(lo, self._starts[i])
        j = i
        while j < len(self._starts) and self._starts[j] <= hi + 1:
            hi = max(hi, self._ends[j])
            j += 1
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]

    def _split(self, addr: int) -> None:
        """Take `addr` out of the merged interval holding it: O(log n) plus a list splice,
        where a rebuild sorts every covered address (an etcd-backed add uncovers its address
        and covers it again when etcd confirms it: a rebuild per add at 10,000 peers)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or self._ends[i] < addr:
            return
        lo, hi = self._starts[i], self._ends[i]
        spans = [(a, b) for a, b in ((lo, addr - 1), (addr + 1, hi)) if a <= b]
        self._starts[i : i + 1] = [a for a, _ in spans]
        self._ends[i : i + 1] = [b for _, b in spans]

    def _rebuild(self) -> None:
        spans = sorted([(a, a) for a in self._hosts] + list(self._ranges))
        self._starts, self._ends = [], []
        for lo, hi in spans:
            if self._ends and lo <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], hi)
            else:
                self._starts.append(lo)
                self._ends.append(hi)
        self._dirty = False

    def is_free(self, addr: int) -> bool:
        """Whether an address may go to a new peer (in range, not the device's own, not
        covered)."""
        if not self.first <= addr <= self.last or addr == self.own:
            return False
        if self._dirty:
            self._rebuild()
        i = bisect.bisect_right(self._starts, addr) - 1
        return i < 0 or self._ends[i] < addr

    # -- allocation ----------------------------------------------------------------------------

    def next_free(self) -> int:
        """The lowest free address (without taking it)."""
        if self._dirty:
            self._rebuild()
        while self._freed:
            candidate = self._freed[0]
            if candidate < self._cursor and self.is_free(candidate):
                return candidate
            heapq.heappop(self._freed)
        addr = self._cursor
        while addr <= self.last:
            if addr == self.own:
                addr += 1
                continue
            i = bisect.bisect_right(self._starts, addr) - 1
            if i >= 0 and self._ends[i] >= addr:
                addr = self._ends[i] + 1
                continue
            self._cursor = addr
            return addr
        self._cursor = addr
        raise Exhausted(f"no free address left in {self.subnet}")

    def allocate(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Take the lowest free address as a host route (the original tool's order, so configs
        look alike)."""
        addr = self.next_free()
        host = ipaddress.ip_network((addr, self.subnet.max_prefixlen))
        self.cover(host)
        return host.network_address


class Allocator:
    """One pool per subnet of the device's Address lines."""

    def __init__(self, addresses: Iterable, peers_allowed_ips: Iterable[Iterable[Network]] = ()):
        self.pools: list[SubnetPool] = []
        seen = set()
        for iface in addresses:
            if iface.network in seen:
                continue
            seen.add(iface.network)
            if iface.network.num_addresses == 1:
                continue  # a /32 or /128 Address gives no room for peers
            own = None if iface.ip == iface.network.network_address else iface.ip
            self.pools.append(SubnetPool(iface.network, own))
        for allowed in peers_allowed_ips:
            self.add_peer(allowed)
        self._held: set[Network] = set()

    def hold(self, networks: Iterable[Network]) -> None:
        """Keep exactly `networks` (besides the peers' AllowedIPs) out of allocation."""
        wanted = set(networks)
        if wanted != self._held:
            self.remove_peer(self._held - wanted)
            self.add_peer(wanted - self._held)
            self._held = wanted

    def add_peer(self, allowed_ips: Iterable[Network]) -> None:
        """A peer's AllowedIPs become taken in every pool they overlap (also used for held
        addresses)."""
        for net in allowed_ips:
            for pool in self.pools:
                if pool.subnet.version == net.version and pool.subnet.overlaps(net):
                    pool.cover(net)

    def remove_peer(self, allowed_ips: Iterable[Network]) -> None:
        """A removed peer's AllowedIPs are offered again (unless still covered by another peer)."""
        for net in allowed_ips:
            for pool in self.pools:
                if pool.subnet.version == net.version and pool.subnet.overlaps(net):
                    pool.uncover(net)

    def allocate(self) -> list[Network]:
        """Host routes for a new peer, one per subnet; all or nothing."""
        if not self.pools:
            raise Exhausted("the device has no Address subnet to allocate from")
        picks = [pool.next_free() for pool in self.pools]  # raises before anything is taken
        nets = [
            ipaddress.ip_network((addr, pool.subnet.max_prefixlen))
            for addr, pool in zip(picks, self.pools, strict=True)
        ]
        self.add_peer(nets)
        return nets
