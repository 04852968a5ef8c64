"""Reassembly of IPv4 fragments (RFC 791 §3.2) and IPv6 fragments (RFC 8200 §4.5).

Sans-IO: fed parsed fragments and `now`; returns whole datagrams, and on `expire(now)` the first
fragments of datagrams that timed out (so the caller can send ICMP "fragment reassembly time
exceeded", which RFC 792/8200 allow only when the first fragment arrived).

Each datagram keeps its received pieces as sorted, non-overlapping intervals. Policy on overlaps,
which is where reassemblers get attacked (teardrop, IDS evasion):

* exact duplicates (same offset, length and bytes) are dropped and the datagram kept, as RFC 8200
  §4.5 permits for the network's own duplication;
* IPv6: any other overlap discards the whole datagram and every later fragment of it until its
  timer runs out (RFC 5722);
* IPv4 (no RFC mandates a policy): an overlap whose bytes agree with what is held contributes only
  its new bytes; one whose bytes disagree discards the datagram exactly as for IPv6. So the output
  is never a choice between two different versions of the same byte.

Other inconsistencies (two different ends, data past the end, a datagram that would exceed 65535)
discard the datagram the same way. Memory is bounded overall (`max_bytes`, `max_datagrams`) by
evicting the oldest datagram, per datagram by `max_datagram_bytes` and `max_fragments`; each piece
is charged `PIECE_OVERHEAD` on top of its data so a flood of 8-byte fragments is bounded too.
"""

from __future__ import annotations

from bisect import bisect_right

from tether.netstack.wire.checksum import checksum
from tether.netstack.wire.ip import (
    MAX_DATAGRAM,
    PROTO_IPV6_FRAG,
    IPPacket,
    PacketError,
    ipv6_fragment_chain,
    parse_ipv4,
    parse_ipv6,
)

TIMEOUT_IPV4 = 30.0  # RFC 1122 §3.3.2 recommends 60-120 s; 30 s is Linux's and ample for a tunnel
TIMEOUT_IPV6 = 60.0  # RFC 8200 §4.5
PIECE_OVERHEAD = 64  # bytes charged per stored piece besides its data


class _Datagram:
    __slots__ = (
        "created",
        "deadline",
        "starts",
        "pieces",
        "total",
        "received",
        "cost",
        "first",
        "dead",
    )

    def __init__(self, now: float, timeout: float) -> None:
        self.created = now
        self.deadline = now + timeout
        self.starts: list[int] = []  # piece start offsets, sorted (bisect index)
        self.pieces: list[tuple[int, int, bytes]] = []  # (start, end, data), parallel to starts
        self.total = -1  # fragmentable length, known once the last fragment (MF=0) arrived
        self.received = 0  # bytes held, pieces never overlap
        self.cost = PIECE_OVERHEAD  # charged against the memory bounds
        self.first: bytes | None = None  # header of the offset-0 fragment (IPv6: up to its
        # fragment header inclusive)
        self.dead = False  # discarded: later fragments are dropped until the deadline


class Reassembler:
    """Reassembles fragments keyed by (src, dst, protocol, identification).

    For IPv6 the key's protocol slot is always 44, because RFC 8200 lets the fragment headers of
    one packet carry different next-header values and uses only the first fragment's.
    Counters (`reassembled`, `timed_out`, `discarded`, `evicted`) are for metrics.
    """

    def __init__(
        self,
        *,
        max_bytes: int = 4 << 20,
        max_datagrams: int = 1024,
        max_datagram_bytes: int = MAX_DATAGRAM,
        max_fragments: int = 256,
        timeout_v4: float = TIMEOUT_IPV4,
        timeout_v6: float = TIMEOUT_IPV6,
        max_reports: int = 64,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self.max_datagram_bytes = max_datagram_bytes
        self.max_fragments = max_fragments
        self.timeout_v4 = timeout_v4
        self.timeout_v6 = timeout_v6
        self.max_reports = max_reports
        # One table per version: with one timeout each, insertion order is deadline order, so
        # expiry and eviction only ever look at the front.
        self._v4: dict[tuple, _Datagram] = {}
        self._v6: dict[tuple, _Datagram] = {}
        self._reports: list[IPPacket] = []
        self.bytes = 0
        self.reassembled = self.timed_out = self.discarded = self.evicted = 0

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    def next_deadline(self) -> float | None:
        """When `expire` next has work, for the caller's timer; None when nothing is held."""
        fronts = [t[next(iter(t))].deadline for t in (self._v4, self._v6) if t]
        return min(fronts) if fronts else None

    def expire(self, now: float) -> list[IPPacket]:
        """Drop datagrams whose timer ran out; return the first fragments of those that had one
        and were not discarded for inconsistency (each is a parsed packet for the ICMP quote)."""
        self._expire(now)
        out, self._reports = self._reports, []
        return out

    def push(self, packet: IPPacket, now: float) -> IPPacket | None:
        """Add one fragment; returns the reassembled datagram when it completes, else None.

        A packet that is not a fragment is returned as it is, so every packet may pass through.
        The result is a freshly parsed packet over a new buffer, headers rebuilt as RFC 791/8200
        describe (IPv4: first fragment's header, fragment fields cleared; IPv6: unfragmentable
        part of the first fragment, fragment header removed and the chain walked on).
        """
        if not packet.is_fragment:
            return packet
        self._expire(now)
        v6 = packet.version == 6
        table = self._v6 if v6 else self._v4
        key = (packet.src, packet.dst, PROTO_IPV6_FRAG if v6 else packet.protocol, packet.ident)
        dg = table.get(key)
        if dg is None:
            dg = self._admit(table, key, now, self.timeout_v6 if v6 else self.timeout_v4)
            if dg is None:
                return None
        elif dg.dead:
            return None
        if not self._insert(dg, packet, v6):
            self._discard(dg)
            return None
        if dg.total < 0 or dg.received != dg.total or dg.first is None:
            return None
        del table[key]
        self.bytes -= dg.cost
        data = b"".join(p[2] for p in dg.pieces)
        try:
            whole = _rebuild_v6(dg.first, data) if v6 else _rebuild_v4(dg.first, data)
        except PacketError:
            self.discarded += 1
            return None
        self.reassembled += 1
        return whole

    # ----------------------------------------------------------------------------- internals

    def _admit(self, table: dict, key: tuple, now: float, timeout: float) -> _Datagram | None:
        while len(self) >= self.max_datagrams or self.bytes + PIECE_OVERHEAD > self.max_bytes:
            if not self._evict_oldest(None):
                return None
        dg = _Datagram(now, timeout)
        table[key] = dg
        self.bytes += dg.cost
        return dg

    def _evict_oldest(self, keep: _Datagram | None) -> bool:
        """Evict the oldest datagram other than `keep`; False if there is none."""
        best = None
        for t in (self._v4, self._v6):
            for k in t:
                if t[k] is keep:
                    continue
                if best is None or t[k].created < best[0][best[1]].created:
                    best = (t, k)
                break
        if best is None:
            return False
        t, k = best
        self.bytes -= t.pop(k).cost
        self.evicted += 1
        return True

    def _expire(self, now: float) -> None:
        for t, v6 in ((self._v4, False), (self._v6, True)):
            while t:
                k = next(iter(t))
                dg = t[k]
                if dg.deadline > now:
                    break
                del t[k]
                self.bytes -= dg.cost
                if dg.dead:
                    continue
                self.timed_out += 1
                if dg.first is None or len(self._reports) >= self.max_reports:
                    continue
                # The first fragment as received, or a prefix of it when an identical IPv4
                # overlap got there first: enough for the ICMP quote.
                first = dg.first + (dg.pieces[0][2] if dg.pieces and dg.pieces[0][0] == 0 else b"")
                try:
                    parse = parse_ipv6 if v6 else parse_ipv4
                    self._reports.append(parse(first, truncated_ok=True))
                except PacketError:
                    pass

    def _discard(self, dg: _Datagram) -> None:
        """Free a datagram's data but keep it, dead, so its later fragments are dropped too."""
        self.bytes -= dg.cost - PIECE_OVERHEAD
        dg.cost = PIECE_OVERHEAD
        dg.starts = []
        dg.pieces = []
        dg.first = None
        dg.dead = True
        self.discarded += 1

    def _insert(self, dg: _Datagram, packet: IPPacket, v6: bool) -> bool:
        """Store the fragment's new bytes; False if the datagram must be discarded."""
        start = packet.frag_offset
        data = packet.payload
        end = start + len(data)
        if packet.more_fragments:
            if dg.total >= 0 and end > dg.total:
                return False
        else:
            if dg.total >= 0 and end != dg.total:
                return False
            if dg.pieces and dg.pieces[-1][1] > end:
                return False
            dg.total = end
        if end > self.max_datagram_bytes:
            return False
        starts, pieces = dg.starts, dg.pieces
        i = bisect_right(starts, start)
        j = i
        if i and pieces[i - 1][1] > start:
            i -= 1
        while j < len(pieces) and pieces[j][0] < end:
            j += 1
        if i == j:  # no overlap: the common case
            new = [(start, end, bytes(data))] if end > start else []
        else:
            if j - i == 1 and pieces[i][0] == start and pieces[i][1] == end:
                # An exact duplicate is harmless; the same span with other bytes is not.
                return pieces[i][2] == data
            if v6:
                return False  # RFC 5722
            new = []
            pos = start
            for s, e, d in pieces[i:j]:
                lo, hi = max(s, start), min(e, end)
                if d[lo - s : hi - s] != data[lo - start : hi - start]:
                    return False
                if s > pos:
                    new.append((pos, s, bytes(data[pos - start : s - start])))
                pos = max(pos, e)
            if pos < end:
                new.append((pos, end, bytes(data[pos - start :])))
        if start == 0 and dg.first is None:
            hl = packet.header_len
            dg.first = bytes(packet.raw[:hl])
            dg.cost += hl
            self.bytes += hl
        if not new:
            return True
        if len(pieces) + len(new) > self.max_fragments:
            return False
        add = sum(e - s for s, e, _ in new)
        cost = add + PIECE_OVERHEAD * len(new)
        while self.bytes + cost > self.max_bytes:
            if not self._evict_oldest(dg):
                return False
        if i == j:
            pieces[i:i] = new
            starts[i:i] = [p[0] for p in new]
        else:
            merged = sorted(pieces[i:j] + new)
            pieces[i:j] = merged
            starts[i:j] = [p[0] for p in merged]
        dg.received += add
        dg.cost += cost
        self.bytes += cost
        return True


def _rebuild_v4(first: bytes, data: bytes) -> IPPacket:
    hl = len(first)
    if hl + len(data) > MAX_DATAGRAM:
        raise PacketError("reassembled IPv4 datagram longer than 65535")
    hdr = bytearray(first)
    hdr[2:4] = (hl + len(data)).to_bytes(2, "big")
    hdr[6:8] = b"\x00\x00"
    hdr[10:12] = b"\x00\x00"
    csum = checksum(hdr)
    hdr[10:12] = csum.to_bytes(2, "big")
    return parse_ipv4(bytes(hdr) + data)


def _rebuild_v6(first: bytes, data: bytes) -> IPPacket:
    nh_pos, frag_off = ipv6_fragment_chain(first)
    unfrag = bytearray(first[:frag_off])
    unfrag[nh_pos] = first[frag_off]
    plen = frag_off - 40 + len(data)
    if plen > MAX_DATAGRAM:
        raise PacketError("reassembled IPv6 packet longer than 65535")
    unfrag[4:6] = plen.to_bytes(2, "big")
    return parse_ipv6(bytes(unfrag) + data)
