"""UDP (RFC 768): round trips, checksums, the zero-checksum rules."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.netstack.wire import (
    PacketError,
    build_ipv4,
    build_ipv6,
    build_udp,
    build_udp_packet,
    parse_ip,
    parse_udp,
    parse_udp_segment,
    pseudo_header_sum,
)

port = st.integers(0, 0xFFFF)
addrs = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@given(addrs, port, port, st.binary(max_size=1500))
def test_round_trip(ad, sport, dport, payload):
    src, dst = ad
    pkt = build_udp_packet(src, dst, sport, dport, payload, ttl=64)
    u = parse_udp(parse_ip(pkt))
    assert (u.src_port, u.dst_port, bytes(u.payload)) == (sport, dport, payload)
    assert u.checksum != 0
    assert build_udp(src, dst, sport, dport, payload) == pkt[len(pkt) - 8 - len(payload) :]


@given(addrs, st.binary(max_size=64))
def test_corruption_detected(ad, payload):
    src, dst = ad
    seg = bytearray(build_udp(src, dst, 1, 2, payload + b"!"))
    seg[-1] ^= 0x01
    with pytest.raises(PacketError, match="checksum"):
        parse_udp_segment(src, dst, bytes(seg))


def test_zero_checksum_rules():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    seg = struct.pack("!HHHH", 1, 2, 11, 0) + b"abc"
    assert bytes(parse_udp_segment(src, dst, seg).payload) == b"abc"  # IPv4: not computed
    with pytest.raises(PacketError, match="zero checksum"):
        parse_udp_segment(bytes(16), bytes(16), seg)  # IPv6: mandatory


@pytest.mark.parametrize("v6", [False, True])
def test_computed_zero_is_sent_as_ffff(v6):
    src, dst = (bytes(15) + b"\x01", bytes(15) + b"\x02") if v6 else (b"\x0a\0\0\1", b"\x0a\0\0\2")
    s0 = pseudo_header_sum(src, dst, 17, 10) + 1 + 2 + 10
    x = -s0 % 0xFFFF
    payload = struct.pack("!H", x)
    seg = build_udp(src, dst, 1, 2, payload)
    assert seg[6:8] == b"\xff\xff"
    assert bytes(parse_udp_segment(src, dst, seg).payload) == payload


def test_length_field():
    src, dst = b"\x0a\0\0\1", b"\x0a\0\0\2"
    seg = build_udp(src, dst, 1, 2, b"hello")
    assert bytes(parse_udp_segment(src, dst, seg + b"junk").payload) == b"hello"
    for bad in (seg[:7], seg[:-1], seg[:4] + b"\x00\x07" + seg[6:]):
        with pytest.raises(PacketError):
            parse_udp_segment(src, dst, bad)
    with pytest.raises(PacketError):
        build_udp(src, dst, 1, 2, bytes(65528))


def test_parse_udp_refuses_fragments_and_other_protocols():
    src, dst = b"\x0a\0\0\1", b"\x0a\0\0\2"
    with pytest.raises(PacketError, match="not UDP"):
        parse_udp(parse_ip(build_ipv4(src, dst, 6, b"x" * 20)))
    with pytest.raises(PacketError, match="fragment"):
        parse_udp(parse_ip(build_ipv6(bytes(16), bytes(16), 44, b"\x11\x00\x00\x09" + bytes(12))))


@given(st.binary(max_size=64), addrs)
def test_garbage_raises_only_packet_error(seg, ad):
    try:
        parse_udp_segment(ad[0], ad[1], seg)
    except PacketError:
        pass
