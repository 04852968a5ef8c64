"""ICMPv4 (RFC 792) and ICMPv6 (RFC 4443): echo, and the error messages the exit originates.

The exit answers a peer's pings and tells it, in ICMP, why a packet went nowhere: no such port or
protocol, a destination refused by policy, a hop limit run out, a packet too big for the path.
Errors quote the offending packet (RFC 1812 §4.3.2.3: as much as fits in 576 bytes for IPv4;
RFC 4443 §2.4(c): as much as fits in the IPv6 minimum MTU), and `may_send_error` applies the rules
on when not to send one (RFC 1122 §3.2.2, RFC 4443 §2.4(e)), which stop error storms and
amplification. `ErrorRateLimiter` is the token bucket RFC 4443 §2.4(f) requires.
"""

from __future__ import annotations

import enum
import errno
import struct
from typing import NamedTuple

from tether.netstack.wire.checksum import checksum, ones_sum, pseudo_header_sum
from tether.netstack.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    IPPacket,
    PacketError,
    ipv4_header,
    ipv6_header,
    parse_ip,
)

ICMPV4_ECHO_REPLY = 0
ICMPV4_DEST_UNREACH = 3
ICMPV4_ECHO_REQUEST = 8
ICMPV4_TIME_EXCEEDED = 11
ICMPV4_PARAM_PROBLEM = 12
ICMPV6_DEST_UNREACH = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_PARAM_PROBLEM = 4
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

# ICMPv4 error types (RFC 1122 §3.2.2): destination unreachable, source quench, redirect, time
# exceeded, parameter problem. ICMPv6 errors are the types below 128 (RFC 4443 §2.1).
_V4_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
IPV4_ERROR_SIZE = 576  # RFC 1812 §4.3.2.3: an ICMPv4 error is at most 576 bytes
IPV6_ERROR_SIZE = 1280  # RFC 4443 §2.4(c): an ICMPv6 error fits in the minimum MTU

_HDR = struct.Struct("!BBHI")


class IcmpError(enum.Enum):
    """Why a packet was not delivered; mapped to (type, code) per IP version below."""

    NET_UNREACHABLE = "net-unreachable"
    HOST_UNREACHABLE = "host-unreachable"
    PROTOCOL_UNREACHABLE = "protocol-unreachable"
    PORT_UNREACHABLE = "port-unreachable"
    ADMIN_PROHIBITED = "admin-prohibited"
    TTL_EXCEEDED = "ttl-exceeded"
    REASSEMBLY_TIMEOUT = "reassembly-timeout"
    TOO_BIG = "too-big"  # IPv4 fragmentation needed and DF set / IPv6 packet too big


_V4_CODES = {
    IcmpError.NET_UNREACHABLE: (ICMPV4_DEST_UNREACH, 0),
    IcmpError.HOST_UNREACHABLE: (ICMPV4_DEST_UNREACH, 1),
    IcmpError.PROTOCOL_UNREACHABLE: (ICMPV4_DEST_UNREACH, 2),
    IcmpError.PORT_UNREACHABLE: (ICMPV4_DEST_UNREACH, 3),
    IcmpError.TOO_BIG: (ICMPV4_DEST_UNREACH, 4),
    IcmpError.ADMIN_PROHIBITED: (ICMPV4_DEST_UNREACH, 13),  # RFC 1812 §5.2.7.1
    IcmpError.TTL_EXCEEDED: (ICMPV4_TIME_EXCEEDED, 0),
    IcmpError.REASSEMBLY_TIMEOUT: (ICMPV4_TIME_EXCEEDED, 1),
}
_V6_CODES = {
    IcmpError.NET_UNREACHABLE: (ICMPV6_DEST_UNREACH, 0),  # no route to destination
    IcmpError.ADMIN_PROHIBITED: (ICMPV6_DEST_UNREACH, 1),
    IcmpError.HOST_UNREACHABLE: (ICMPV6_DEST_UNREACH, 3),  # address unreachable
    IcmpError.PORT_UNREACHABLE: (ICMPV6_DEST_UNREACH, 4),
    # IPv6 has no "protocol unreachable": it is a parameter problem, unrecognized next header,
    # pointing at the byte that named the protocol.
    IcmpError.PROTOCOL_UNREACHABLE: (ICMPV6_PARAM_PROBLEM, 1),
    IcmpError.TOO_BIG: (ICMPV6_PACKET_TOO_BIG, 0),
    IcmpError.TTL_EXCEEDED: (ICMPV6_TIME_EXCEEDED, 0),
    IcmpError.REASSEMBLY_TIMEOUT: (ICMPV6_TIME_EXCEEDED, 1),
}


_ERRNO_ICMP = {
    errno.ECONNREFUSED: IcmpError.PORT_UNREACHABLE,
    errno.EHOSTUNREACH: IcmpError.HOST_UNREACHABLE,
    errno.EHOSTDOWN: IcmpError.HOST_UNREACHABLE,
    errno.ETIMEDOUT: IcmpError.HOST_UNREACHABLE,
    errno.ENETUNREACH: IcmpError.NET_UNREACHABLE,
    errno.ENETDOWN: IcmpError.NET_UNREACHABLE,
    errno.EADDRNOTAVAIL: IcmpError.NET_UNREACHABLE,  # e.g. no IPv6 address on the host
    errno.EAFNOSUPPORT: IcmpError.NET_UNREACHABLE,
    errno.EACCES: IcmpError.ADMIN_PROHIBITED,  # broadcast, or a host firewall said so
    errno.EPERM: IcmpError.ADMIN_PROHIBITED,
    errno.EMSGSIZE: IcmpError.TOO_BIG,
}


def errno_to_icmp(err: int, default: IcmpError | None = None) -> IcmpError | None:
    """The ICMP error that tells a peer what a host socket error means: the exit proxies a
    destination through a host socket, and this is how what the host learned of it (refused,
    unreachable, prohibited, too big) reaches the peer in the terms its stack understands."""
    return _ERRNO_ICMP.get(err, default)


class ICMPMessage(NamedTuple):
    """A parsed ICMP message; `rest` is the 32-bit field after the checksum, whose meaning
    depends on the type (see the properties); `body` is echo data or the quoted packet."""

    version: int
    type: int
    code: int
    rest: int
    body: memoryview

    @property
    def ident(self) -> int:
        """Echo identifier."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """Next-hop MTU of fragmentation-needed (RFC 1191, low 16 bits) or packet-too-big."""
        return self.rest & 0xFFFF if self.version == 4 else self.rest

    @property
    def pointer(self) -> int:
        """Parameter-problem pointer (IPv4: high octet; IPv6: all 32 bits)."""
        return self.rest >> 24 if self.version == 4 else self.rest

    @property
    def is_error(self) -> bool:
        return self.type in _V4_ERROR_TYPES if self.version == 4 else self.type < 128

    def quoted(self) -> IPPacket:
        """The offending packet an error message quotes, parsed leniently (it is truncated)."""
        if not self.is_error:
            raise PacketError("ICMP message is not an error")
        return parse_ip(self.body, truncated_ok=True)


def parse_icmp(ip: IPPacket, *, verify: bool = True) -> ICMPMessage:
    """Parse the ICMPv4 or ICMPv6 message in a parsed (reassembled) packet.

    `verify=False` skips the checksum, for packets already authenticated by WireGuard's AEAD
    (see `udp.parse_udp_segment`)."""
    if ip.is_fragment:
        raise PacketError("ICMP in an unreassembled fragment")
    if ip.version == 4:
        if ip.protocol != PROTO_ICMP:
            raise PacketError("not ICMP")
        return parse_icmpv4(ip.payload, verify=verify)
    if ip.protocol != PROTO_ICMPV6:
        raise PacketError("not ICMPv6")
    return parse_icmpv6(ip.src, ip.dst, ip.payload, verify=verify)


def parse_icmpv4(data: bytes | memoryview, *, verify: bool = True) -> ICMPMessage:
    """Parse an ICMPv4 message; the checksum covers the message alone (RFC 792)."""
    mv = data if type(data) is memoryview else memoryview(data)
    if len(mv) < 8:
        raise PacketError("ICMP header truncated")
    if verify and checksum(mv):
        raise PacketError("ICMP checksum")
    t, c, _, rest = _HDR.unpack_from(mv)
    return ICMPMessage(4, t, c, rest, mv[8:])


def parse_icmpv6(
    src: bytes, dst: bytes, data: bytes | memoryview, *, verify: bool = True
) -> ICMPMessage:
    """Parse an ICMPv6 message; its checksum includes the IPv6 pseudo-header (RFC 4443 §2.3)."""
    mv = data if type(data) is memoryview else memoryview(data)
    if len(mv) < 8:
        raise PacketError("ICMPv6 header truncated")
    if verify and checksum(mv, pseudo_header_sum(src, dst, PROTO_ICMPV6, len(mv))):
        raise PacketError("ICMPv6 checksum")
    t, c, _, rest = _HDR.unpack_from(mv)
    return ICMPMessage(6, t, c, rest, mv[8:])


def icmp_header(
    src: bytes, dst: bytes, type_: int, code: int, rest: int, body: bytes | memoryview
) -> bytes:
    """The 8-byte ICMP header for `body`: ICMPv4 when the addresses are IPv4 (no pseudo-header),
    ICMPv6 otherwise."""
    s = (type_ << 8 | code) + (rest >> 16) + (rest & 0xFFFF)
    if len(src) == 16:
        s += pseudo_header_sum(src, dst, PROTO_ICMPV6, 8 + len(body))
    return _HDR.pack(type_, code, (~ones_sum(body, s)) & 0xFFFF, rest)


def build_icmp(
    src: bytes, dst: bytes, type_: int, code: int, rest: int, body: bytes | memoryview
) -> bytes:
    """A complete ICMP message (header + body) between `src` and `dst`."""
    return icmp_header(src, dst, type_, code, rest, body) + body


def build_icmp_packet(
    src: bytes,
    dst: bytes,
    type_: int,
    code: int,
    rest: int,
    body: bytes | memoryview,
    *,
    ttl: int = 64,
    ident: int = 0,
) -> bytes:
    """A complete IPv4 or IPv6 packet (by address length) carrying one ICMP message."""
    hdr = icmp_header(src, dst, type_, code, rest, body)
    n = 8 + len(body)
    if len(src) == 4:
        iph = ipv4_header(src, dst, PROTO_ICMP, n, ttl, ident)
    else:
        iph = ipv6_header(src, dst, PROTO_ICMPV6, n, ttl)
    return b"".join((iph, hdr, body))


def build_echo(
    src: bytes,
    dst: bytes,
    ident: int,
    seq: int,
    data: bytes | memoryview,
    *,
    reply: bool = True,
    ttl: int = 64,
) -> bytes:
    """An echo reply (or request) packet: the exit's answer to a peer's ping."""
    if len(src) == 4:
        t = ICMPV4_ECHO_REPLY if reply else ICMPV4_ECHO_REQUEST
    else:
        t = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return build_icmp_packet(src, dst, t, 0, (ident & 0xFFFF) << 16 | (seq & 0xFFFF), data, ttl=ttl)


def build_error(
    offending: IPPacket,
    src: bytes,
    kind: IcmpError,
    *,
    mtu: int = 0,
    ttl: int = 64,
    ident: int = 0,
) -> bytes:
    """An ICMP error packet from `src` back to the offending packet's source, quoting it.

    `mtu` is the next-hop MTU for `IcmpError.TOO_BIG`. For IPv6 protocol-unreachable the pointer
    is the offset of the next-header byte that named the unknown protocol. Call `may_send_error`
    (and a rate limiter) first: this function builds whatever it is asked to.
    """
    if len(src) != len(offending.src):
        raise PacketError("ICMP error source of the wrong IP version")
    if offending.version == 4:
        t, c = _V4_CODES[kind]
        rest = mtu & 0xFFFF if kind is IcmpError.TOO_BIG else 0
        limit = IPV4_ERROR_SIZE - 20 - 8
    else:
        t, c = _V6_CODES[kind]
        if kind is IcmpError.TOO_BIG:
            rest = mtu
        elif kind is IcmpError.PROTOCOL_UNREACHABLE:
            rest = offending.nh_pos
        else:
            rest = 0
        limit = IPV6_ERROR_SIZE - 40 - 8
    quote = offending.raw[:limit]
    return build_icmp_packet(src, offending.src, t, c, rest, quote, ttl=ttl, ident=ident)


def may_send_error(offending: IPPacket, kind: IcmpError | None = None) -> bool:
    """Whether an ICMP error about `offending` is allowed at all.

    Never about an ICMP error (or an ICMP message too short to tell), nor about a packet whose
    source names no single host (unspecified, loopback, multicast, broadcast/class E), nor about a
    packet sent to multicast or broadcast (IPv6 allows packet-too-big there, for path MTU
    discovery), nor, for IPv4, about a fragment other than the first.
    """
    s, d = offending.src, offending.dst
    if offending.version == 4:
        if offending.frag_offset:
            return False
        if s[0] == 0 or s[0] == 127 or s[0] >= 224 or d[0] >= 224:
            return False
        if offending.protocol == PROTO_ICMP:
            p = offending.payload
            return len(p) > 0 and p[0] not in _V4_ERROR_TYPES
        return True
    if s[0] == 0xFF or s == b"\x00" * 16 or s == b"\x00" * 15 + b"\x01":
        return False
    if d[0] == 0xFF and kind is not IcmpError.TOO_BIG:
        return False
    if offending.protocol == PROTO_ICMPV6 and offending.frag_offset == 0:
        p = offending.payload
        return len(p) > 0 and p[0] >= 128
    return True


class ErrorRateLimiter:
    """Token bucket for originated ICMP errors (RFC 4443 §2.4(f); RFC 1812 §4.3.2.8 for IPv4).

    `rate` tokens per second up to `burst`; `allow(now)` takes one if there is one.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float = 100.0, burst: float = 50.0) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
