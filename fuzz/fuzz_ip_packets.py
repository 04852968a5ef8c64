"""Fuzz target for the exit's packet layer: IP parse, UDP/ICMP parse, ICMP errors, reassembly,
and the datagram/segment class a batch is ordered by (`is_datagram`).

Run: `python fuzz/fuzz_ip_packets.py [corpus_dir] [-max_total_time=60]` (needs atheris).
The contract under test: a parser may raise `PacketError` and nothing else, whatever the bytes;
and whatever it accepts must survive the operations the exit performs next.

The first input byte picks a mode: raw packets (fed as they are, so IPv4 header checksums mostly
fail early) or structured fragments (headers built here with valid checksums from the input's
fields, so the fuzzer reaches the reassembler's overlap and bound logic).
"""

from __future__ import annotations

import struct
import sys

from tether.netstack.wire import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    ErrorRateLimiter,
    IcmpError,
    IPPacket,
    PacketError,
    Reassembler,
    build_error,
    build_ipv6,
    checksum,
    fragment_ipv4,
    fragment_ipv6,
    is_datagram,
    may_send_error,
    parse_icmp,
    parse_ip,
    parse_udp,
)

# Small bounds so eviction and limits are reached; the clock comes from the input.
_REASSEMBLER = Reassembler(max_bytes=1 << 16, max_datagrams=8, max_fragments=32)
_LIMITER = ErrorRateLimiter()
_DATAGRAM_PROTOCOLS = (PROTO_ICMP, PROTO_UDP, PROTO_ICMPV6)
_SRC4, _DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
_SRC6, _DST6 = bytes(15) + b"\x01", bytes(15) + b"\x02"


def _exercise(p: IPPacket, now: float) -> None:
    """Everything the exit does with an accepted packet; only PacketError may come out."""
    assert p.header_len + len(p.payload) == len(p.raw)
    assert 0 <= p.nh_pos < p.header_len
    whole = _REASSEMBLER.push(p, now)
    for q in (p, whole):
        if q is None or q.is_fragment:
            continue
        try:
            if q.protocol == PROTO_UDP:
                parse_udp(q)
            elif q.protocol in (PROTO_ICMP, PROTO_ICMPV6):
                m = parse_icmp(q)
                if m.is_error:
                    m.quoted()
        except PacketError:
            pass
        if may_send_error(q) and _LIMITER.allow(now):
            src = _SRC4 if q.version == 4 else _SRC6
            for kind in (IcmpError.PORT_UNREACHABLE, IcmpError.PROTOCOL_UNREACHABLE):
                err = parse_ip(build_error(q, src, kind, mtu=1280))
                assert parse_icmp(err).quoted().src == q.src
        mtu = 576 if q.version == 4 else 1280
        try:
            frags = fragment_ipv4(q.raw, mtu) if q.version == 4 else fragment_ipv6(q.raw, mtu, 1)
        except PacketError:
            continue
        assert all(len(f) <= mtu for f in frags)


def _structured(data: bytes, now: float) -> None:
    """Input as a list of fragment records: flags, ident, offset/8, length, then data bytes."""
    pos = 0
    while pos + 5 <= len(data):
        flags, ident, off8, n = struct.unpack_from("<BBHB", data, pos)
        pos += 5
        chunk = data[pos : pos + n * 8 + (flags >> 4 & 7)]
        pos += len(chunk)
        mf = flags & 1
        off8 &= 0x1FFF
        try:
            if flags & 2:
                fh = struct.pack("!BxHI", PROTO_UDP, off8 << 3 | mf, ident)
                p = parse_ip(build_ipv6(_SRC6, _DST6, 44, fh + chunk))
            else:
                hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident,
                                            off8 | (0x2000 if mf else 0), 64, PROTO_UDP, 0,
                                            _SRC4, _DST4))  # fmt: skip
                hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
                p = parse_ip(bytes(hdr) + chunk)
        except PacketError:
            continue
        _exercise(p, now + (flags >> 2 & 1) * 31.0)
        now += 0.001


def _class_protocol(p) -> int:
    """The protocol `is_datagram` must go by, the same for every piece of a flow: the parser's,
    except past IPv6 extension headers, where only hop-by-hop and routing are walked, a fragment
    header's next header decides and destination options (0x3C) stop the walk."""
    if p.version == 4:
        return p.protocol
    raw, nh, off = p.raw, p.raw[6], 40
    while nh in (0, 43):
        nh, off = raw[off], off + ((raw[off + 1] + 1) << 3)
    return raw[off] if nh == 44 else nh


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if len(data) < 2:
        return
    mode, now = data[0], data[1] * 0.5
    body = data[2:]
    if mode & 1:
        _structured(body, now)
    else:
        datagram = is_datagram(body)  # the batch's order is chosen before any parse
        for truncated_ok in (False, True):
            try:
                p = parse_ip(body, truncated_ok=truncated_ok)
            except PacketError:
                continue
            assert datagram == (_class_protocol(p) in _DATAGRAM_PROTOCOLS)
            _exercise(p, now)
    _REASSEMBLER.expire(now)
    assert _REASSEMBLER.bytes <= _REASSEMBLER.max_bytes
    assert len(_REASSEMBLER) <= _REASSEMBLER.max_datagrams


if __name__ == "__main__":
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
