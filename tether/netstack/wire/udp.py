"""UDP (RFC 768) datagrams with the pseudo-header checksum, for IPv4 and IPv6.

The checksum is folded arithmetically: the UDP header words and the pseudo-header are summed as
integers and added to one big-integer pass over the payload, so building a datagram copies the
payload once (into the finished IP packet) and parsing copies it never.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from tether.netstack.wire.checksum import checksum, ones_sum
from tether.netstack.wire.ip import (
    PROTO_UDP,
    IPPacket,
    PacketError,
    ipv4_header,
    ipv6_header,
)

_UDP = struct.Struct("!HHHH")


class UDPDatagram(NamedTuple):
    """A parsed UDP datagram; `payload` is a view into the packet's buffer."""

    src_port: int
    dst_port: int
    payload: memoryview
    checksum: int  # as received; 0 means "not computed" (IPv4 only)


def parse_udp(ip: IPPacket, *, verify: bool = True) -> UDPDatagram:
    """Parse the UDP datagram in a parsed packet (reassembled first, if it was fragmented)."""
    if ip.is_fragment:
        raise PacketError("UDP in an unreassembled fragment")
    if ip.protocol != PROTO_UDP:
        raise PacketError("not UDP")
    return parse_udp_segment(ip.src, ip.dst, ip.payload, verify=verify)


def parse_udp_segment(
    src: bytes, dst: bytes, segment: bytes | memoryview, *, verify: bool = True
) -> UDPDatagram:
    """Parse a UDP segment between `src` and `dst` (4 or 16 bytes each).

    The length field must lie within the segment; bytes beyond it are ignored (RFC 768). The
    checksum is verified when nonzero; for IPv6 zero is refused, because the pseudo-header checksum
    is mandatory there (RFC 8200 §8.1; the RFC 6935 exception is for tunnel endpoints that opt in).

    `verify=False` skips the sum over the payload, the one per-byte cost of parsing. A packet
    that just passed WireGuard's AEAD is already authenticated end to end, which is why the
    kernel's WireGuard marks decrypted packets CHECKSUM_UNNECESSARY; the exit may do the same.
    """
    mv = segment if type(segment) is memoryview else memoryview(segment)
    if len(mv) < 8:
        raise PacketError("UDP header truncated")
    sport, dport, length, csum = _UDP.unpack_from(mv)
    if length < 8 or length > len(mv):
        raise PacketError("UDP length field inconsistent")
    if length != len(mv):
        mv = mv[:length]
    if csum:
        if verify and checksum(mv, _pseudo(src, dst, length)):
            raise PacketError("UDP checksum")
    elif len(src) == 16:
        raise PacketError("UDP zero checksum over IPv6")
    return UDPDatagram(sport, dport, mv[8:], csum)


def _pseudo(src: bytes, dst: bytes, length: int) -> int:
    """`pseudo_header_sum(src, dst, 17, length)` up to a multiple of 0xFFFF, which is all
    `ones_sum` keeps: an address read as one integer is congruent to the sum of its 16-bit words
    modulo 0xFFFF. Half the cost of packing the pseudo-header, and this runs per packet."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + PROTO_UDP + length


def udp_header(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | bytearray | memoryview
) -> bytes:
    """The 8-byte UDP header for `payload`, checksum included (zero is sent as 0xFFFF)."""
    length = 8 + len(payload)
    if length > 65535:
        raise PacketError("UDP datagram longer than 65535")
    s = _pseudo(src, dst, length) + sport + dport + length
    csum = (~ones_sum(payload, s)) & 0xFFFF or 0xFFFF
    return _UDP.pack(sport, dport, length, csum)


def build_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | bytearray | memoryview
) -> bytes:
    """A complete UDP segment (header + payload) for the given addresses."""
    return udp_header(src, dst, sport, dport, payload) + payload


def build_udp_packet(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = 64,
    ident: int = 0,
    df: bool = False,
    tos: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A complete IPv4 or IPv6 packet (chosen by address length) carrying one UDP datagram.

    `ident`/`df` apply to IPv4 only (see `ipv4_header`); `flow_label` to IPv6 only. The payload is
    copied once, straight into the finished packet.
    """
    udph = udp_header(src, dst, sport, dport, payload)
    n = 8 + len(payload)
    if len(src) == 4:
        iph = ipv4_header(src, dst, PROTO_UDP, n, ttl, ident, tos=tos, df=df)
    else:
        iph = ipv6_header(src, dst, PROTO_UDP, n, ttl, traffic_class=tos, flow_label=flow_label)
    return b"".join((iph, udph, payload))
