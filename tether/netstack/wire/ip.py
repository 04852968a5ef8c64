"""IPv4 (RFC 791) and IPv6 (RFC 8200) packets: parse, build and fragment.

The exit sees every packet a peer sends, so parsing is one `struct.unpack_from` over a memoryview
and one tuple allocation; payloads are memoryview slices, never copies. A parsed packet refers to
the caller's buffer, which must therefore stay unchanged while the packet is in use (the fragment
reassembler copies what it keeps).

Anything malformed raises `PacketError` with a short reason; no other exception escapes a parser,
because the caller's only sensible reaction to a bad packet is to count it and drop it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from tether.netstack.wire.checksum import checksum

# IANA protocol numbers used by the netstack.
PROTO_HOPOPT = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6_ROUTE = 43
PROTO_IPV6_FRAG = 44
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_IPV6_NONXT = 59
PROTO_IPV6_OPTS = 60

IPV4_MIN_MTU = 68  # RFC 791: every IPv4 module must forward a 68-octet datagram unfragmented
IPV6_MIN_MTU = 1280  # RFC 8200 §5
MAX_DATAGRAM = 65535

# RFC 8504 §5.3 lets a node bound the extension-header chain it walks; a peer has no reason to send
# more than hop-by-hop, destination options, routing, fragment and destination options again.
MAX_EXTENSION_HEADERS = 8

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_FRAG6 = struct.Struct("!BxHI")
_HALF = struct.Struct("!H")
_IPV4_LSRR = 0x83
_IPV4_SSRR = 0x89
_new = tuple.__new__


class PacketError(ValueError):
    """A packet is malformed or unsupported; `str(err)` is the reason, for counters and logs."""


class FragmentationNeeded(PacketError):
    """`fragment_ipv4` was asked to split a packet carrying DF: the caller answers with ICMP
    fragmentation-needed (RFC 1191) quoting `mtu`, rather than this module deciding for it."""

    def __init__(self, mtu: int) -> None:
        super().__init__(f"DF set and packet exceeds MTU {mtu}")
        self.mtu = mtu


class IPPacket(NamedTuple):
    """One parsed IPv4 or IPv6 packet.

    A tuple, not a class with attributes, because building it is the cheapest allocation Python has
    and the exit builds one per packet. `raw` is exactly the datagram (link padding, e.g.
    WireGuard's 16-byte padding, is cut off by the total/payload length). For IPv6 `header_len`
    covers the fixed header and every extension header walked; `protocol` is then the upper-layer
    protocol, or the header the walk stopped at (ESP, AH, no-next-header, anything unknown).
    For a fragment (`is_fragment`), `protocol` is the fragment's next header and `payload` the
    fragment's data, since nothing past a fragment header can be read before reassembly.
    """

    version: int
    src: bytes
    dst: bytes
    protocol: int
    ttl: int  # IPv4 time to live / IPv6 hop limit
    tos: int  # IPv4 type of service / IPv6 traffic class (DSCP + ECN)
    flow_label: int  # IPv6 only, else 0
    ident: int  # fragment identification (16-bit IPv4, 32-bit IPv6; 0 without a fragment header)
    frag_offset: int  # in bytes
    more_fragments: bool
    dont_fragment: bool  # IPv4 DF; always True for IPv6, which routers never fragment
    is_fragment: bool  # offset != 0 or MF: must go through the reassembler first
    header_len: int  # payload starts at raw[header_len]
    nh_pos: int  # offset in raw of the byte holding `protocol` (ICMPv6 parameter-problem pointer)
    raw: memoryview
    payload: memoryview

    @property
    def header(self) -> memoryview:
        """IP header plus options (IPv4) or extension headers walked (IPv6)."""
        return self.raw[: self.header_len]

    @property
    def hop_limit(self) -> int:
        return self.ttl


def _view(data: bytes | bytearray | memoryview) -> memoryview:
    if type(data) is not memoryview:
        return memoryview(data)  # bytes and bytearray views are already flat bytes
    return data if data.itemsize == 1 and data.ndim == 1 else data.cast("B")


_ANSWERED_ONE_AT_A_TIME = bytes(
    p in (PROTO_ICMP, PROTO_UDP, PROTO_ICMPV6) for p in range(256)
)  # by IP protocol number: 1 for ICMP, UDP and ICMPv6


def is_datagram(packet: bytes | bytearray | memoryview) -> bool:
    """Whether the packet carries ICMP, UDP or ICMPv6, for ordering a batch before it is parsed
    (see `ExitShell.receive_packets`). Every packet of a flow must land in the same class, or the
    flow is reordered: every fragment of an IPv4 datagram names its protocol; an IPv6 packet is
    read through its extension headers (`_datagram_v6`), and a fragment by its fragment header's
    next header, which every piece of the datagram carries. Anything too short to tell is not a
    datagram."""
    if len(packet) < 10:
        return False
    if packet[0] >> 4 == 4:
        return _ANSWERED_ONE_AT_A_TIME[packet[9]] == 1
    nh = packet[6]
    if nh in _EXT:
        return _datagram_v6(packet, nh)
    return _ANSWERED_ONE_AT_A_TIME[nh] == 1


def _datagram_v6(packet: bytes | bytearray | memoryview, nh: int) -> bool:
    """`is_datagram` past IPv6 extension headers: a client fragments its big UDP datagrams and not
    its small ones, so a flow has packets with and without a fragment header. Walked: what stays
    in front of a fragment header (hop-by-hop, routing). The fragment header's next header
    decides, as a later piece (no transport header) can tell nothing else. Destination options
    may go behind the fragment header, where a later piece cannot see past them, so a packet
    that carries them is a segment, fragmented or not. Bounded as the parser's walk; a
    truncated chain is not a datagram (the exit drops it)."""
    off, end = 40, len(packet)
    for _ in range(MAX_EXTENSION_HEADERS):
        if off + 8 > end or nh == PROTO_IPV6_OPTS:
            return False
        if nh == PROTO_IPV6_FRAG:
            return _ANSWERED_ONE_AT_A_TIME[packet[off]] == 1
        nh, off = packet[off], off + ((packet[off + 1] + 1) << 3)
        if nh not in _EXT:
            return _ANSWERED_ONE_AT_A_TIME[nh] == 1
    return False


def parse_ip(data: bytes | bytearray | memoryview, *, truncated_ok: bool = False) -> IPPacket:
    """Parse an IPv4 or IPv6 packet, chosen by the version nibble.

    `truncated_ok` accepts a datagram cut short of its stated length (the quote inside an ICMP
    error); the headers themselves must still be complete.
    """
    try:
        version = data[0] >> 4
    except IndexError:
        raise PacketError("empty packet") from None
    except TypeError:
        raise PacketError("not a byte buffer") from None
    if version == 4:
        return parse_ipv4(data, truncated_ok=truncated_ok)
    if version == 6:
        return parse_ipv6(data, truncated_ok=truncated_ok)
    raise PacketError(f"IP version {version}")


# --------------------------------------------------------------------------------------- IPv4


def parse_ipv4(data: bytes | bytearray | memoryview, *, truncated_ok: bool = False) -> IPPacket:
    """Parse an IPv4 packet (RFC 791): version, IHL, total length, header checksum, options."""
    mv = _view(data)
    n = len(mv)
    if n < 20:
        raise PacketError("IPv4 header truncated")
    vihl, tos, total, ident, frag, ttl, proto, _, src, dst = _V4.unpack_from(mv)
    if vihl >> 4 != 4:
        raise PacketError("not IPv4")
    hl = (vihl & 15) << 2
    if hl < 20:
        raise PacketError("IPv4 IHL below 5")
    if total < hl:
        raise PacketError("IPv4 total length below header length")
    if total > n:
        if not truncated_ok or hl > n:
            raise PacketError("IPv4 total length beyond buffer")
        total = n
    # Valid iff the one's-complement sum is 0xFFFF, i.e. the header read as one integer is a
    # (nonzero: the version nibble is not) multiple of 0xFFFF; see checksum.ones_sum.
    if int.from_bytes(mv[:hl], "big") % 0xFFFF:
        raise PacketError("IPv4 header checksum")
    if hl > 20:
        _check_ipv4_options(mv, hl)
    off = (frag & 0x1FFF) << 3
    mf = frag & 0x2000 != 0
    plen = total - hl
    if mf and plen & 7:
        raise PacketError("IPv4 fragment length not a multiple of 8")
    if off + plen + hl > MAX_DATAGRAM:
        raise PacketError("IPv4 fragment ends beyond 65535")
    raw = mv if total == n else mv[:total]
    return _new(
        IPPacket,
        (4, src, dst, proto, ttl, tos, 0, ident, off, mf, frag & 0x4000 != 0,
         mf or off != 0, hl, 9, raw, raw[hl:]),
    )  # fmt: skip


def _check_ipv4_options(mv: memoryview, hl: int) -> None:
    """Options are skipped, but their TLVs must fit, and source routes are refused.

    A loose/strict source route means the destination field is only the next hop; proxying to it
    would send traffic somewhere the sender did not ask for (hosts drop these by default too).
    """
    i = 20
    while i < hl:
        kind = mv[i]
        if kind == 0:  # end of option list
            return
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= hl or mv[i + 1] < 2 or i + mv[i + 1] > hl:
            raise PacketError("IPv4 option overruns header")
        if kind in (_IPV4_LSRR, _IPV4_SSRR):
            raise PacketError("IPv4 source route option")
        i += mv[i + 1]


def _ipv4_header(
    src: bytes,
    dst: bytes,
    proto: int,
    total: int,
    ttl: int,
    ident: int,
    tos: int,
    frag: int,
    options: bytes | memoryview,
) -> bytes:
    """Header with its checksum, summed arithmetically so the header is packed only once."""
    hl = 20 + len(options)
    vihl = 0x40 | (hl >> 2)
    s = (
        (vihl << 8 | tos)
        + total
        + ident
        + frag
        + (ttl << 8 | proto)
        + int.from_bytes(src, "big")
        + int.from_bytes(dst, "big")
    )
    csum = checksum(options, s) if options else (~(s % 0xFFFF or 0xFFFF)) & 0xFFFF
    hdr = _V4.pack(vihl, tos, total, ident, frag, ttl, proto, csum, src, dst)
    return hdr + options if options else hdr


def ipv4_header(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    ttl: int = 64,
    ident: int = 0,
    *,
    tos: int = 0,
    df: bool = False,
    options: bytes = b"",
) -> bytes:
    """The IPv4 header (checksum included) for a payload of `payload_len` bytes.

    Lets a caller that assembles header, transport header and payload join them in one copy.
    `ident` must be unique per (src, dst, proto) for the datagram's lifetime whenever it may be
    fragmented (RFC 6864); the caller owns that counter. With `df` set it may be anything.
    `options` are padded with end-of-list octets to a multiple of four.
    """
    if len(src) != 4 or len(dst) != 4:
        raise PacketError("IPv4 addresses are 4 bytes")
    if len(options) & 3:
        options = options + b"\x00" * (4 - (len(options) & 3))
    if len(options) > 40:
        raise PacketError("IPv4 options longer than 40 bytes")
    total = 20 + len(options) + payload_len
    if total > MAX_DATAGRAM:
        raise PacketError("IPv4 datagram longer than 65535")
    return _ipv4_header(src, dst, proto, total, ttl, ident, tos, 0x4000 if df else 0, options)


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes | bytearray | memoryview,
    ttl: int = 64,
    ident: int = 0,
    *,
    tos: int = 0,
    df: bool = False,
    options: bytes = b"",
) -> bytes:
    """A complete IPv4 packet with a correct header checksum (arguments as for `ipv4_header`)."""
    hdr = ipv4_header(src, dst, proto, len(payload), ttl, ident, tos=tos, df=df, options=options)
    return hdr + payload


def ip_wrapper(src: bytes, dst: bytes, proto: int = PROTO_TCP, ttl: int = 64):
    """A function wrapping a transport segment in an IP header from `src` to `dst`.

    Per flow, everything in the header but the length is fixed, so it is summed (IPv4) or packed
    (IPv6) once here and each segment costs one pack and one join. IPv4 headers carry DF and
    identification 0, as RFC 6864 §4.1 allows for atomic datagrams: MSS keeps every segment
    within the MTU. The checksum is computed as `ipv4_header` does (see `checksum.ones_sum`).
    """
    if len(src) == 4:
        base = 0x4500 + 0x4000 + (ttl << 8 | proto) + int.from_bytes(src, "big")
        base += int.from_bytes(dst, "big")
        pack = _V4.pack

        def wrap4(segment: bytes) -> bytes:
            total = 20 + len(segment)
            s = (base + total) % 0xFFFF or 0xFFFF
            return pack(0x45, 0, total, 0, 0x4000, ttl, proto, 0xFFFF - s, src, dst) + segment

        return wrap4
    head = b"\x60\x00\x00\x00"
    tail = bytes((proto, ttl)) + src + dst

    def wrap6(segment: bytes) -> bytes:
        return b"".join((head, len(segment).to_bytes(2, "big"), tail, segment))

    return wrap6


def _copied_options(options: memoryview) -> bytes:
    """Options whose copy flag is set (RFC 791): they go into every fragment, others only in the
    first. Padded to a multiple of four octets."""
    out = bytearray()
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1]
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    if len(out) & 3:
        out += b"\x00" * (4 - (len(out) & 3))
    return bytes(out)


def fragment_ipv4(packet: bytes | bytearray | memoryview, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most `mtu` bytes (RFC 791 §3.2).

    A packet that fits is returned whole. With DF set `FragmentationNeeded` is raised, so the
    caller decides between ICMP and dropping. A packet that already is a fragment is split further
    (offsets stay relative to the original datagram, MF kept on its last piece).
    """
    p = parse_ipv4(packet)
    if len(p.raw) <= mtu:
        return [bytes(p.raw)]
    if p.dont_fragment:
        raise FragmentationNeeded(mtu)
    if mtu < IPV4_MIN_MTU:
        raise PacketError(f"MTU {mtu} below IPv4 minimum {IPV4_MIN_MTU}")
    opts_first = p.raw[20 : p.header_len]
    opts_rest = _copied_options(opts_first) if opts_first else b""
    data = p.payload
    out = []
    pos, end = 0, len(data)
    options = opts_first
    while pos < end:
        room = (mtu - 20 - len(options)) & ~7
        stop = min(pos + room, end)
        last = stop == end
        frag = ((p.frag_offset + pos) >> 3) | (0x2000 if (not last or p.more_fragments) else 0)
        chunk = data[pos:stop]
        total = 20 + len(options) + len(chunk)
        hdr = _ipv4_header(p.src, p.dst, p.protocol, total, p.ttl, p.ident, p.tos, frag, options)
        out.append(hdr + chunk)
        pos = stop
        options = opts_rest
    return out


# --------------------------------------------------------------------------------------- IPv6


def parse_ipv6(data: bytes | bytearray | memoryview, *, truncated_ok: bool = False) -> IPPacket:
    """Parse an IPv6 packet (RFC 8200) and walk its extension headers to the upper layer.

    Walked: hop-by-hop options (only directly after the fixed header), routing (only with Segments
    Left 0: otherwise the destination field is an intermediate hop and we do not forward source
    routes), destination options (options whose type demands discard on not being understood are
    refused, which also refuses jumbograms), and fragment. The walk stops at a non-atomic fragment
    header, at ESP (50) and no-next-header (59), and at AH (51): we hold no IPsec security
    associations, so AH is reported as the protocol rather than skipped, which would pass
    authenticated traffic on as if it were plain; the exit then answers as for any unsupported
    protocol. An atomic fragment (offset 0, M=0, RFC 6946) is a whole packet and the walk goes on.
    A first fragment must carry the whole header chain (RFC 7112).
    """
    mv = _view(data)
    n = len(mv)
    if n < 40:
        raise PacketError("IPv6 header truncated")
    vtcfl, plen, nh, hlim, src, dst = _V6.unpack_from(mv)
    if vtcfl >> 28 != 6:
        raise PacketError("not IPv6")
    total = 40 + plen
    if total > n:
        if not truncated_ok:
            raise PacketError("IPv6 payload length beyond buffer")
        total = n
    raw = mv if total == n else mv[:total]
    tc = (vtcfl >> 20) & 0xFF
    fl = vtcfl & 0xFFFFF
    if nh not in _EXT:
        return _new(
            IPPacket,
            (6, src, dst, nh, hlim, tc, fl, 0, 0, False, True, False, 40, 6, raw, raw[40:]),
        )
    nh, nh_pos, off, ident, foff, mf, frag = _walk(raw, nh, 6, 40, 0, False)
    return _new(
        IPPacket,
        (6, src, dst, nh, hlim, tc, fl, ident, foff, mf, True, frag, off, nh_pos, raw, raw[off:]),
    )


_EXT = frozenset((PROTO_HOPOPT, PROTO_IPV6_ROUTE, PROTO_IPV6_FRAG, PROTO_IPV6_OPTS))


def _walk(
    mv: memoryview, nh: int, nh_pos: int, off: int, count: int, seen_frag: bool
) -> tuple[int, int, int, int, int, bool, bool]:
    """Walk extension headers from `off`; returns (next header, its position, upper-layer offset,
    fragment id, fragment offset, M flag, is a real fragment)."""
    end = len(mv)
    ident = foff = 0
    mf = False
    while nh in _EXT:
        count += 1
        if count > MAX_EXTENSION_HEADERS:
            raise PacketError("IPv6 extension header chain too long")
        if off + 8 > end:
            raise PacketError("IPv6 extension header truncated")
        if nh == PROTO_IPV6_FRAG:
            if seen_frag:
                raise PacketError("IPv6 second fragment header")
            seen_frag = True
            nxt, fo, ident = _FRAG6.unpack_from(mv, off)
            foff = fo & 0xFFF8
            mf = fo & 1 == 1
            nh_pos, nh, off = off, nxt, off + 8
            if foff or mf:
                flen = end - off
                if mf and flen & 7:
                    raise PacketError("IPv6 fragment length not a multiple of 8")
                if (off - 48) + foff + flen > MAX_DATAGRAM:
                    raise PacketError("IPv6 fragment ends beyond 65535")
                if foff == 0 and nh in _EXT:
                    # RFC 7112: the first fragment holds the entire header chain.
                    _walk(mv, nh, nh_pos, off, count, True)
                return nh, nh_pos, off, ident, foff, mf, True
            continue
        hlen = (mv[off + 1] + 1) << 3
        if off + hlen > end:
            raise PacketError("IPv6 extension header truncated")
        if nh == PROTO_IPV6_ROUTE:
            if mv[off + 3]:
                raise PacketError("IPv6 routing header with segments left")
        elif nh == PROTO_HOPOPT and off != 40:
            raise PacketError("IPv6 hop-by-hop options not first")
        else:
            _check_options(mv, off + 2, off + hlen)
        nh_pos, nh, off = off, mv[off], off + hlen
    return nh, nh_pos, off, ident, foff, mf, False


def _check_options(mv: memoryview, i: int, end: int) -> None:
    """Options TLVs (RFC 8200 §4.2): the two high bits of an option type we do not implement say
    whether to skip it (00) or discard the packet (01, 10, 11). We implement only padding."""
    while i < end:
        kind = mv[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end:
            raise PacketError("IPv6 option truncated")
        nxt = i + 2 + mv[i + 1]
        if nxt > end:
            raise PacketError("IPv6 option overruns header")
        if kind & 0xC0:
            raise PacketError(f"IPv6 option {kind:#x} not understood")
        i = nxt


def ipv6_fragment_chain(raw: memoryview | bytes) -> tuple[int, int]:
    """For a packet with a fragment header: (position of the byte that names the fragment header,
    offset of the fragment header). Reassembly rewrites that byte (RFC 8200 §4.5)."""
    nh, nh_pos, off = raw[6], 6, 40
    while nh != PROTO_IPV6_FRAG:
        if nh not in _EXT or off + 8 > len(raw):
            raise PacketError("IPv6 packet has no fragment header")
        nh, nh_pos, off = raw[off], off, off + ((raw[off + 1] + 1) << 3)
    return nh_pos, off


def ipv6_header(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_len: int,
    hop_limit: int = 64,
    *,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """The 40-byte IPv6 header for a payload (extension headers included) of `payload_len`."""
    if len(src) != 16 or len(dst) != 16:
        raise PacketError("IPv6 addresses are 16 bytes")
    if payload_len > MAX_DATAGRAM:
        raise PacketError("IPv6 payload longer than 65535")
    vtcfl = 0x60000000 | (traffic_class & 0xFF) << 20 | (flow_label & 0xFFFFF)
    return _V6.pack(vtcfl, payload_len, next_header, hop_limit, src, dst)


def build_ipv6(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes | bytearray | memoryview,
    hop_limit: int = 64,
    *,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A complete IPv6 packet. Extension headers, if any, are the caller's part of `payload`."""
    hdr = ipv6_header(
        src,
        dst,
        next_header,
        len(payload),
        hop_limit,
        traffic_class=traffic_class,
        flow_label=flow_label,
    )
    return hdr + payload


def fragment_ipv6(packet: bytes | bytearray | memoryview, mtu: int, ident: int) -> list[bytes]:
    """Split an IPv6 packet the exit originates into fragments of at most `mtu` (RFC 8200 §4.5).

    Only the source fragments in IPv6, and the exit is the source of the replies it sends a peer.
    The unfragmentable part is the fixed header plus hop-by-hop and, when present, everything up to
    and including the last routing header; `ident` is the caller's 32-bit identification.
    """
    mv = _view(packet)
    p = parse_ipv6(mv)
    if len(p.raw) <= mtu:
        return [bytes(p.raw)]
    raw = p.raw
    nh, off = raw[6], 40
    unfrag_end, unfrag_nh_pos = 40, 6
    while nh in _EXT:
        if nh == PROTO_IPV6_FRAG:
            raise PacketError("IPv6 packet already fragmented")
        nxt, end = raw[off], off + ((raw[off + 1] + 1) << 3)
        if nh == PROTO_IPV6_ROUTE or (nh == PROTO_HOPOPT and off == 40):
            unfrag_end, unfrag_nh_pos = end, off
        nh, off = nxt, end
    room = (mtu - unfrag_end - 8) & ~7
    if room < 8:
        raise PacketError(f"MTU {mtu} leaves no room for IPv6 fragment data")
    unfrag = bytearray(raw[:unfrag_end])
    frag_nh = unfrag[unfrag_nh_pos]
    unfrag[unfrag_nh_pos] = PROTO_IPV6_FRAG
    data = raw[unfrag_end:]
    out = []
    pos, end = 0, len(data)
    while pos < end:
        stop = min(pos + room, end)
        chunk = data[pos:stop]
        unfrag[4:6] = _HALF.pack(unfrag_end - 40 + 8 + len(chunk))
        fh = _FRAG6.pack(frag_nh, pos | (stop < end), ident)
        out.append(bytes(unfrag) + fh + chunk)
        pos = stop
    return out
