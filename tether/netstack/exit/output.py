"""Where the exit's parts put what they produce: one `ExitOutput` per `Exit`, owned by it and
handed to the flow tables and the limits when they are made.

The parts append (binding `actions.append` once, since that is per-packet work) and count; only
the `Exit` takes from it (`take_actions`, `take_packets`, `counters`). So no part reaches into
the exit's private state, and what the exit hands out is everything its parts produced.
"""

from __future__ import annotations

from collections import Counter

from tether.netstack.wire import PacketError, fragment_ipv4, fragment_ipv6

__all__ = ["ExitOutput"]


class ExitOutput:
    """`actions` for the IO shell (in execution order), `packets` toward peers (each at most
    `mtu` bytes: `send` fragments), and `stats`, the counters behind `Exit.counters()`."""

    __slots__ = ("actions", "packets", "stats", "mtu", "_ident4", "_ident6")

    def __init__(self, mtu: int) -> None:
        self.actions: list = []
        self.packets: list[bytes] = []
        self.stats: Counter[str] = Counter()
        self.mtu = mtu
        self._ident4 = 0
        self._ident6 = 0

    def send(self, packet: bytes) -> None:
        """Queue a packet toward a peer, fragmenting it if it exceeds the MTU: replies the exit
        builds (UDP, echo, ICMP errors) can be larger than the tunnel carries, and IPv4 with
        fresh identifications (RFC 6864) or IPv6 as its source (RFC 8200 §4.5), which the exit
        is for what it builds, may be fragmented on the way."""
        if len(packet) <= self.mtu:
            self.packets.append(packet)
            return
        try:
            if packet[0] >> 4 == 4:
                frags = fragment_ipv4(packet, self.mtu)
            else:
                frags = fragment_ipv6(packet, self.mtu, self.next_ident6())
        except PacketError:
            self.stats["drop_unfragmentable"] += 1
            return
        self.packets.extend(frags)
        self.stats["fragmented"] += 1

    def next_ident4(self) -> int:
        """IPv4 identification for a datagram that may be fragmented (RFC 6864 §4.2)."""
        self._ident4 = (self._ident4 + 1) & 0xFFFF
        return self._ident4

    def next_ident6(self) -> int:
        """IPv6 fragment identification for a packet the exit fragments itself."""
        self._ident6 = (self._ident6 + 1) & 0xFFFFFFFF
        return self._ident6
