"""The Internet checksum (RFC 1071) and the transport pseudo-headers that feed it.

Every packet the exit builds passes through here, so the sum is computed with big-integer
arithmetic done in C rather than in a Python loop over 16-bit words.
"""

from __future__ import annotations

import struct


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """16-bit one's-complement sum of `data` (big-endian words) plus `initial`.

    Because 2**16 is congruent to 1 modulo 0xFFFF, the one's-complement sum of the words of a byte
    string equals the string read as one big integer modulo 0xFFFF; CPython does that reduction in
    C. The only care needed is one's complement's two zeros: a nonzero sum that is a multiple of
    0xFFFF is 0xFFFF, never 0.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    n = int.from_bytes(data, "big") + initial
    if n == 0:
        return 0
    r = n % 0xFFFF
    return r if r else 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum: complement of the one's-complement sum."""
    return (~ones_sum(data, initial)) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """One's-complement sum of the IPv4 (RFC 793) or IPv6 (RFC 8200 §8.1) pseudo-header."""
    if len(src) == 4:
        ph = src + dst + struct.pack("!BBH", 0, protocol, length)
    else:
        ph = src + dst + struct.pack("!IxxxB", length, protocol)
    return ones_sum(ph)


def transport_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes) -> int:
    """Checksum of a TCP/UDP/ICMPv6 segment, checksum field zeroed, with its pseudo-header."""
    return checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment)))
