"""TCP wire format (RFC 9293 §3.1): parse and build segments, options included.

Only the header lives here; the connection logic is in the `tcp` package. Sequence and
acknowledgment numbers stay 32-bit wire values in a `Segment`; the connection unwraps them.

Options understood: MSS (RFC 9293 §3.7.1), window scale and timestamps (RFC 7323), SACK-permitted
and SACK blocks (RFC 2018). Unknown options are skipped by their length, as RFC 9293 §3.1 requires.
`TcpError` is the only exception raised for malformed input, so a caller can treat every other
exception as a bug.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "PROTO_TCP",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "Segment",
    "TcpError",
    "addresses_sum",
    "build_reset_reply",
    "build_segment",
    "parse_segment",
    "timestamped_builder",
]

PROTO_TCP = 6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 §2.3: larger shift counts are treated as 14
_M32 = 0xFFFFFFFF

_HDR = struct.Struct("!HHIIBBHHH")
_HDR_TS = struct.Struct("!HHIIBBHHHBBBBII")  # header + NOP NOP TS, the common data/ACK shape
_TS_OPT = struct.Struct("!III")  # NOP NOP kind len, TSval, TSecr at offset 20
_TS_KINDS = 0x0101080A
_U16 = struct.Struct("!H")
_U32x2 = struct.Struct("!II")


class TcpError(ValueError):
    """A segment that is not well-formed TCP (truncated, bad offset, bad checksum, bad option)."""


class Segment:
    """One parsed TCP segment. Plain attributes (`__slots__`) because this is per-packet work.

    `window` is the raw 16-bit field: scaling depends on connection state, not on the segment.
    Absent options are `None` (or `False`/empty for SACK-permitted and SACK blocks).
    """

    __slots__ = (
        "sport",
        "dport",
        "seq",
        "ack",
        "flags",
        "window",
        "urgent",
        "mss",
        "wscale",
        "sack_permitted",
        "sack_blocks",
        "tsval",
        "tsecr",
        "payload",
    )

    def __init__(
        self,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload: bytes | memoryview = b"",
        urgent: int = 0,
        mss: int | None = None,
        wscale: int | None = None,
        sack_permitted: bool = False,
        sack_blocks: tuple[tuple[int, int], ...] = (),
        tsval: int | None = None,
        tsecr: int | None = None,
    ) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.urgent = urgent
        self.mss = mss
        self.wscale = wscale
        self.sack_permitted = sack_permitted
        self.sack_blocks = sack_blocks
        self.tsval = tsval
        self.tsecr = tsecr
        self.payload = payload

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload octets plus one for each of SYN and FIN (they occupy sequence space)."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self) -> str:
        names = "".join(
            c for bit, c in zip((1, 2, 4, 8, 16), "FSRPA", strict=True) if self.flags & bit
        )
        return (
            f"Segment({self.sport}->{self.dport} [{names}] seq={self.seq} ack={self.ack} "
            f"win={self.window} len={len(self.payload)} mss={self.mss} ws={self.wscale} "
            f"sackok={self.sack_permitted} sack={self.sack_blocks} ts={self.tsval},{self.tsecr})"
        )


def _parse_options(seg: Segment, opts: bytes | memoryview) -> None:
    """Walk the option list (RFC 9293 §3.2). A length that runs off the end is malformed."""
    i = 0
    n = len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise TcpError("option length missing")
        length = opts[i + 1]
        if length < 2 or i + length > n:
            raise TcpError(f"bad length {length} for option {kind}")
        if kind == OPT_MSS:
            if length != 4:
                raise TcpError("bad MSS option length")
            seg.mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise TcpError("bad window scale option length")
            seg.wscale = min(opts[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise TcpError("bad SACK-permitted option length")
            seg.sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise TcpError("bad SACK option length")
            words = struct.unpack_from(f"!{(length - 2) // 4}I", opts, i + 2)
            seg.sack_blocks = tuple(zip(words[0::2], words[1::2], strict=True))
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                raise TcpError("bad timestamp option length")
            seg.tsval, seg.tsecr = _U32x2.unpack_from(opts, i + 2)
        i += length


def addresses_sum(src: bytes, dst: bytes) -> int:
    """A number congruent (mod 0xFFFF) to the one's-complement sum of the pseudo-header's addresses.

    Callers that parse or build many segments for one address pair compute it once and pass it as
    `addr_sum`.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise TcpError("addresses must both be IPv4 or both IPv6")
    return int.from_bytes(src + dst, "big")


def parse_segment(
    src: bytes,
    dst: bytes,
    data: bytes | bytearray | memoryview,
    *,
    verify_checksum: bool = True,
    addr_sum: int | None = None,
) -> Segment:
    """Parse a TCP segment (header + payload) carried from `src` to `dst` (4- or 16-byte addresses).

    The checksum is verified over the RFC 9293/RFC 8200 pseudo-header unless the caller says the
    transport checksum was already checked (checksum offload in tests). The payload is a
    memoryview into `data`: no copy is made until the data is queued.

    The sum is RFC 1071's done in C: 2**16 is 1 modulo 0xFFFF, so the one's-complement sum of a
    byte string's 16-bit words is the string read as one integer, modulo 0xFFFF (an odd tail is
    padded with a zero byte, i.e. shifted left by 8). A correct segment sums to "negative zero".
    """
    n = len(data)
    if n < 20:
        raise TcpError(f"segment of {n} bytes is shorter than a TCP header")
    sport, dport, seq, ack, off, flags, window, _csum, urgent = _HDR.unpack_from(data)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > n:
        raise TcpError(f"bad data offset {hlen} for a {n}-byte segment")
    if verify_checksum:
        if addr_sum is None:
            addr_sum = addresses_sum(src, dst)
        v = int.from_bytes(data, "big")
        if n & 1:
            v <<= 8
        if (v + addr_sum + PROTO_TCP + n) % 0xFFFF:
            raise TcpError("bad TCP checksum")
    mv = data if isinstance(data, memoryview) else memoryview(data)
    seg = Segment(sport, dport, seq, ack, flags, window, mv[hlen:], urgent)
    if hlen == 32:
        kinds, tsval, tsecr = _TS_OPT.unpack_from(data, 20)
        if kinds == _TS_KINDS:
            seg.tsval = tsval
            seg.tsecr = tsecr
            return seg
    if hlen > 20:
        _parse_options(seg, mv[20:hlen])
    return seg


def _options(
    mss: int | None,
    wscale: int | None,
    sack_permitted: bool,
    timestamps: tuple[int, int] | None,
    sack_blocks: tuple[tuple[int, int], ...] | list[tuple[int, int]],
) -> bytes:
    """Options laid out as Linux does, so every option is 32-bit aligned and the list pads to 4."""
    parts: list[bytes] = []
    if mss is not None:
        parts.append(struct.pack("!BBH", OPT_MSS, 4, mss))
    if timestamps is not None:
        prefix = b"\x04\x02" if sack_permitted else b"\x01\x01"
        parts.append(prefix + struct.pack("!BBII", OPT_TIMESTAMP, 10, *timestamps))
    elif sack_permitted:
        parts.append(b"\x01\x01\x04\x02")
    if wscale is not None:
        parts.append(struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, wscale))
    if sack_blocks:
        flat = [v & _M32 for block in sack_blocks for v in block]
        parts.append(struct.pack(f"!BBBB{len(flat)}I", 1, 1, OPT_SACK, 2 + 4 * len(flat), *flat))
    opts = b"".join(parts)
    if len(opts) > 40:
        raise TcpError(f"{len(opts)} bytes of options do not fit in a TCP header")
    return opts


def build_segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    timestamps: tuple[int, int] | None = None,
    sack_blocks: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
    urgent: int = 0,
    addr_sum: int | None = None,
) -> bytes:
    """Build a checksummed TCP segment from `src` to `dst`; the caller wraps it in IP.

    `seq`/`ack` are reduced modulo 2**32. `addr_sum` (see `addresses_sum`) may be passed by a
    connection that builds many segments for the same address pair. The checksum is summed over
    header and payload separately (the header length is even, so one's-complement sums add), which
    lets the payload be copied exactly once, into the returned bytes.
    """
    plen = len(payload)
    if addr_sum is None:
        addr_sum = addresses_sum(src, dst)
    seq &= _M32
    ack &= _M32
    fast = (
        timestamps is not None
        and mss is None
        and wscale is None
        and not sack_permitted
        and not sack_blocks
    )
    if fast:
        tsval, tsecr = timestamps
        hdr = _HDR_TS.pack(
            sport, dport, seq, ack, 0x80, flags, window, 0, urgent, 1, 1, 8, 10, tsval, tsecr
        )
        hlen = 32
    else:
        opts = _options(mss, wscale, sack_permitted, timestamps, sack_blocks)
        hlen = 20 + len(opts)
        hdr = _HDR.pack(sport, dport, seq, ack, hlen << 2, flags, window, 0, urgent) + opts
    # One's-complement sum of header (checksum zero) + payload + pseudo-header, as in parse.
    v = int.from_bytes(hdr, "big") + addr_sum + PROTO_TCP + hlen + plen
    if plen:
        v += int.from_bytes(payload, "big") << 8 if plen & 1 else int.from_bytes(payload, "big")
    r = v % 0xFFFF
    csum = 0xFFFF - r if r else 0
    if fast:
        hdr = _HDR_TS.pack(
            sport, dport, seq, ack, 0x80, flags, window, csum, urgent, 1, 1, 8, 10, tsval, tsecr
        )
    else:
        hdr = _HDR.pack(sport, dport, seq, ack, hlen << 2, flags, window, csum, urgent) + opts
    return hdr + payload if plen else hdr


def build_reset_reply(src: bytes, dst: bytes, seg: Segment) -> bytes | None:
    """The RST a closed port sends in answer to `seg` (RFC 9293 §3.10.7.1), or None for a RST.

    `src`/`dst` are the reply's addresses (the segment's destination and source). The shell uses
    this for segments that match no connection.
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return build_segment(src, dst, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    return build_segment(src, dst, seg.dport, seg.sport, 0, seg.seq + seg.seg_len, RST | ACK, 0)


def timestamped_builder(src: bytes, dst: bytes, sport: int, dport: int):
    """A builder of the segments a connection sends most: header + NOP NOP timestamps, no other
    option, from `src`:`sport` to `dst`:`dport`. Returns build(seq, ack, flags, window, payload,
    tsval, tsecr) -> bytes, equal to `build_segment` with those arguments.

    A download is one such segment per 1.4 kB, so per-segment work is what its speed is made
    of. Everything fixed per connection (ports, option words, the pseudo-header's addresses and
    protocol) is summed once here; the header's other words are added as integers, since a
    32-bit field is congruent modulo 0xFFFF to the sum of its two 16-bit halves (2**16 = 1
    mod 0xFFFF): the header is packed once, with its checksum, and only the payload is read.
    """
    base = sport + dport + 0x8000 + 0x0101 + 0x080A + addresses_sum(src, dst) + PROTO_TCP + 32
    pack = _HDR_TS.pack
    from_bytes = int.from_bytes

    def build(seq: int, ack: int, flags: int, window: int, payload, tsval: int, tsecr: int):
        seq &= _M32
        ack &= _M32
        plen = len(payload)
        v = base + seq + ack + flags + window + tsval + tsecr + plen
        if plen:
            v += from_bytes(payload, "big") << 8 if plen & 1 else from_bytes(payload, "big")
        r = v % 0xFFFF
        hdr = pack(
            sport, dport, seq, ack, 0x80, flags, window, 0xFFFF - r if r else 0, 0, 1, 1, 8, 10,
            tsval, tsecr,
        )  # fmt: skip
        return hdr + payload if plen else hdr

    return build
