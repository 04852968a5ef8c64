"""Where the exit's parts put what they produce: one `ExitOutput` per `Exit`, owned by it and
handed to the flow tables and the limits when they are made.

The parts append (binding `actions.append` once, since that is per-packet work) and count; only
the `Exit` takes from it (`take_actions`, `take_packets`, `counters`). So no part reaches into
the exit's private state, and what the exit hands out is everything its parts produced.

Packets toward peers are kept in two lists so that what the exit builds one at a time (echo and
UDP replies, ICMP errors, peer-to-peer forwards: `send`) leaves ahead of the TCP segments a
collection produced in bulk (`packets`, the TCP table's): a ping or a DNS answer then does not
wait behind the encryption of a download's burst, as fq_codel serves sparse flows first. The
two never carry the same flow, so no flow is reordered.
"""

from __future__ import annotations

from collections import Counter

from tether.netstack.wire import PacketError, fragment_ipv4, fragment_ipv6

__all__ = ["ExitOutput"]


class ExitOutput:
    """`actions` for the IO shell (in execution order), packets toward peers (each at most
    `mtu` bytes: `send` fragments) in `first` (built one at a time) and `packets` (the TCP
    table's segments), and `stats`, the counters behind `Exit.counters()`."""

    __slots__ = ("actions", "first", "packets", "stats", "mtu", "_ident4", "_ident6")

    def __init__(self, mtu: int) -> None:
        self.actions: list = []
        self.first: list[bytes] = []
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
            self.first.append(packet)
            return
        try:
            if packet[0] >> 4 == 4:
                frags = fragment_ipv4(packet, self.mtu)
            else:
                frags = fragment_ipv6(packet, self.mtu, self.next_ident6())
        except PacketError:
            self.stats["drop_unfragmentable"] += 1
            return
        self.first.extend(frags)
        self.stats["fragmented"] += 1

    def next_ident4(self) -> int:
        """IPv4 identification for a datagram that may be fragmented (RFC 6864 §4.2)."""
        self._ident4 = (self._ident4 + 1) & 0xFFFF
        return self._ident4

    def next_ident6(self) -> int:
        """IPv6 fragment identification for a packet the exit fragments itself."""
        self._ident6 = (self._ident6 + 1) & 0xFFFFFFFF
        return self._ident6

    def take_packets(self) -> list[bytes]:
        """Everything queued toward peers, `first` ahead of `packets`, and empty both."""
        out = self.first + self.packets
        self.first.clear()
        self.packets.clear()  # the same list: the TCP table holds its bound `append`
        return out

    def take_first(self) -> list[bytes]:
        """Only `first`, emptied."""
        first = self.first
        out = first[:]
        first.clear()
        return out

    def drop_toward(self, gone: set[bytes]) -> None:
        """Drop the queued packets whose destination address is in `gone`."""
        for queue in (self.first, self.packets):
            if queue:
                queue[:] = [p for p in queue if _destination(p) not in gone]

    def clear(self) -> None:
        """Drop every queued packet toward peers."""
        self.first.clear()
        self.packets.clear()


def _destination(packet: bytes) -> bytes:
    """The destination address of an IP packet the exit built (IPv4 or IPv6)."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
