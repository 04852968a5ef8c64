"""ICMPv4/ICMPv6: echo and errors; when errors may be sent."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.netstack.wire import (
    ErrorRateLimiter,
    IcmpError,
    PacketError,
    build_echo,
    build_error,
    build_icmp,
    build_ipv4,
    build_ipv6,
    build_udp_packet,
    checksum,
    may_send_error,
    parse_icmp,
    parse_icmpv4,
    parse_icmpv6,
    parse_ip,
)

A4, B4 = bytes([10, 0, 0, 1]), bytes([93, 184, 216, 34])
A6, B6 = bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"
u16 = st.integers(0, 0xFFFF)


@given(u16, u16, st.binary(max_size=1400), st.booleans(), st.booleans())
def test_echo_round_trip(ident, seq, data, reply, v6):
    src, dst = (A6, B6) if v6 else (A4, B4)
    pkt = build_echo(src, dst, ident, seq, data, reply=reply)
    m = parse_icmp(parse_ip(pkt))
    assert (m.ident, m.seq, bytes(m.body), m.is_error) == (ident, seq, data, False)
    assert m.type == (129 if reply else 128) if v6 else m.type == (0 if reply else 8)


def offending(v6: bool, size: int = 3000):
    if v6:
        return parse_ip(build_udp_packet(B6, A6, 5353, 9, bytes(size)))
    return parse_ip(build_udp_packet(B4, A4, 5353, 9, bytes(size)))


V4_EXPECT = {
    IcmpError.NET_UNREACHABLE: (3, 0),
    IcmpError.HOST_UNREACHABLE: (3, 1),
    IcmpError.PROTOCOL_UNREACHABLE: (3, 2),
    IcmpError.PORT_UNREACHABLE: (3, 3),
    IcmpError.TOO_BIG: (3, 4),
    IcmpError.ADMIN_PROHIBITED: (3, 13),
    IcmpError.TTL_EXCEEDED: (11, 0),
    IcmpError.REASSEMBLY_TIMEOUT: (11, 1),
}
V6_EXPECT = {
    IcmpError.NET_UNREACHABLE: (1, 0),
    IcmpError.ADMIN_PROHIBITED: (1, 1),
    IcmpError.HOST_UNREACHABLE: (1, 3),
    IcmpError.PORT_UNREACHABLE: (1, 4),
    IcmpError.PROTOCOL_UNREACHABLE: (4, 1),
    IcmpError.TOO_BIG: (2, 0),
    IcmpError.TTL_EXCEEDED: (3, 0),
    IcmpError.REASSEMBLY_TIMEOUT: (3, 1),
}


@pytest.mark.parametrize("kind", list(IcmpError))
@pytest.mark.parametrize("size", [0, 20, 3000])
def test_ipv4_errors_quote_and_fit_576(kind, size):
    off = offending(False, size)
    pkt = build_error(off, A4, kind, mtu=1400)
    assert len(pkt) <= 576
    ip = parse_ip(pkt)
    assert ip.src == A4 and ip.dst == B4
    m = parse_icmp(ip)
    assert (m.type, m.code) == V4_EXPECT[kind] and m.is_error
    assert bytes(m.body) == bytes(off.raw[: 576 - 28])
    assert len(m.body) >= min(len(off.raw), off.header_len + 8)
    q = m.quoted()
    assert (q.src, q.dst, q.protocol) == (B4, A4, 17)
    if kind is IcmpError.TOO_BIG:
        assert m.mtu == 1400


@pytest.mark.parametrize("kind", list(IcmpError))
@pytest.mark.parametrize("size", [0, 3000])
def test_ipv6_errors_quote_and_fit_1280(kind, size):
    off = offending(True, size)
    pkt = build_error(off, A6, kind, mtu=1280)
    assert len(pkt) <= 1280
    m = parse_icmp(parse_ip(pkt))
    assert (m.type, m.code) == V6_EXPECT[kind]
    assert bytes(m.body) == bytes(off.raw[: 1280 - 48])
    assert m.quoted().src == B6
    if kind is IcmpError.TOO_BIG:
        assert m.mtu == 1280
    if kind is IcmpError.PROTOCOL_UNREACHABLE:
        assert m.pointer == 6


def test_protocol_unreachable_pointer_after_extension_headers():
    raw = build_ipv6(B6, A6, 60, bytes([200, 0, 1, 4, 0, 0, 0, 0]) + b"whatever")
    off = parse_ip(raw)
    assert off.protocol == 200
    m = parse_icmp(parse_ip(build_error(off, A6, IcmpError.PROTOCOL_UNREACHABLE)))
    assert m.pointer == 40 and raw[m.pointer] == 200


def test_parse_rejects_bad_checksum_and_short():
    msg = bytearray(build_icmp(A4, B4, 8, 0, 0x10001, b"abc"))
    assert parse_icmpv4(bytes(msg)).seq == 1
    msg[-1] ^= 1
    with pytest.raises(PacketError):
        parse_icmpv4(bytes(msg))
    with pytest.raises(PacketError):
        parse_icmpv4(b"\x08\x00\x00")
    m6 = build_icmp(A6, B6, 128, 0, 0, b"")
    assert parse_icmpv6(A6, B6, m6).type == 128
    with pytest.raises(PacketError):
        parse_icmpv6(A6, A6, m6)  # pseudo-header covers the addresses
    with pytest.raises(PacketError, match="not ICMP"):
        parse_icmp(parse_ip(build_ipv4(A4, B4, 17, bytes(8))))
    with pytest.raises(PacketError, match="not an error"):
        parse_icmpv4(bytes(build_icmp(A4, B4, 8, 0, 0, b""))).quoted()
    with pytest.raises(PacketError):
        build_error(offending(True), A4, IcmpError.PORT_UNREACHABLE)


def test_may_send_error_rules():
    ok4 = offending(False, 10)
    assert may_send_error(ok4)
    err4 = parse_ip(build_error(ok4, A4, IcmpError.PORT_UNREACHABLE))
    assert not may_send_error(err4)  # never about an ICMP error
    assert may_send_error(parse_ip(build_echo(B4, A4, 1, 1, b"")))
    for src, dst in ((bytes(4), A4), (b"\x7f\0\0\1", A4), (b"\xe0\0\0\1", A4),
                     (B4, b"\xff\xff\xff\xff"), (B4, b"\xe0\0\0\xfb")):  # fmt: skip
        assert not may_send_error(parse_ip(build_ipv4(src, dst, 17, bytes(8))))
    ok6 = offending(True, 10)
    assert may_send_error(ok6)
    assert not may_send_error(parse_ip(build_error(ok6, A6, IcmpError.TOO_BIG, mtu=1280)))
    assert may_send_error(parse_ip(build_echo(B6, A6, 1, 1, b"")))
    mcast = parse_ip(build_ipv6(B6, b"\xff\x02" + bytes(13) + b"\x01", 17, bytes(8)))
    assert not may_send_error(mcast, IcmpError.PORT_UNREACHABLE)
    assert may_send_error(mcast, IcmpError.TOO_BIG)  # path MTU discovery for multicast
    assert not may_send_error(parse_ip(build_ipv6(bytes(16), A6, 17, bytes(8))))


def test_may_send_error_skips_non_first_ipv4_fragments():
    raw = bytearray(build_ipv4(B4, A4, 17, bytes(16)))
    raw[6:8] = b"\x00\x01"  # offset 8
    raw[10:12] = b"\x00\x00"
    raw[10:12] = checksum(bytes(raw[:20])).to_bytes(2, "big")
    assert not may_send_error(parse_ip(bytes(raw)))


def test_rate_limiter_token_bucket():
    rl = ErrorRateLimiter(rate=10, burst=3)
    assert [rl.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not rl.allow(0.05)
    assert rl.allow(0.1)
    assert not rl.allow(0.1)
    assert [rl.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert not rl.allow(50.0)  # a clock going backwards earns nothing


@given(st.binary(max_size=64), st.booleans())
def test_garbage_raises_only_packet_error(data, v6):
    try:
        m = parse_icmpv6(A6, B6, data) if v6 else parse_icmpv4(data)
        m.quoted()
    except PacketError:
        pass
