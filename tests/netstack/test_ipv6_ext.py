"""IPv6 extension-header walks (RFC 8200 §4) on hand-built chains (scapy-built ones are in
test_scapy_crosscheck.py)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.netstack.wire import (
    PROTO_AH,
    PROTO_ESP,
    PROTO_IPV6_NONXT,
    PROTO_UDP,
    PacketError,
    build_ipv6,
    fragment_ipv6,
    parse_ipv6,
)


def ext(nh: int, body: bytes = b"\x00" * 6) -> bytes:
    """A generic (len+1)*8 extension header with next header `nh`."""
    body += b"\x00" * (-(len(body) + 2) % 8)
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def v6(first_nh: int, rest: bytes) -> bytes:
    return build_ipv6(bytes(15) + b"\x01", bytes(15) + b"\x02", first_nh, rest)


UDP8 = bytes([0, 1, 0, 2, 0, 12, 0, 0]) + b"data"  # not checksummed: the walk never looks


def frag_hdr(nh: int, offset: int, m: int, ident: int) -> bytes:
    return struct.pack("!BxHI", nh, offset | m, ident)


@pytest.mark.parametrize(
    "first, chain",
    [
        (0, ext(17)),  # hop-by-hop
        (0, bytes([17, 0, 5, 2, 0, 0, 1, 0])),  # hop-by-hop, router alert (type 00: skip)
        (60, bytes([17, 1, 1, 11]) + bytes(12)),  # destination options, PadN
        (60, bytes([17, 0, 0, 0, 1, 2, 0, 0])),  # Pad1 then PadN
        (0, ext(60) + ext(43) + bytes([17, 0, 0, 0]) + bytes(4)),  # HBH, dest, routing SL=0
        (44, frag_hdr(17, 0, 0, 7)),  # atomic fragment (RFC 6946): walked through
        (60, ext(44) + frag_hdr(60, 0, 0, 9) + ext(17)),
    ],
)
def test_walk_reaches_udp(first, chain):
    raw = v6(first, chain + UDP8)
    p = parse_ipv6(raw)
    assert p.protocol == PROTO_UDP and p.header_len == 40 + len(chain) and not p.is_fragment
    assert raw[p.nh_pos] == PROTO_UDP
    assert bytes(p.payload) == UDP8


def test_walk_stops_at_esp_ah_and_no_next_header():
    for nh in (PROTO_ESP, PROTO_IPV6_NONXT):
        p = parse_ipv6(v6(0, ext(60) + ext(nh)))
        assert p.protocol == nh and p.header_len == 56 and p.nh_pos == 48
    # AH: no security association here, so it is reported rather than skipped.
    ah = bytes([17, 4, 0, 0]) + bytes(8) + bytes(12)  # RFC 4302: length in 4-octet units - 2
    p = parse_ipv6(v6(0, ext(PROTO_AH) + ah + UDP8))
    assert p.protocol == PROTO_AH and p.header_len == 48


def test_atomic_fragment_records_identification():
    p = parse_ipv6(v6(44, frag_hdr(17, 0, 0, 0xDEADBEEF) + UDP8))
    assert p.ident == 0xDEADBEEF and not p.is_fragment and p.protocol == PROTO_UDP


def test_real_fragment_stops_the_walk():
    p = parse_ipv6(v6(0, ext(44) + frag_hdr(60, 40, 1, 3) + b"x" * 16))
    assert p.is_fragment and p.frag_offset == 40 and p.more_fragments and p.ident == 3
    assert p.protocol == 60 and p.header_len == 56 and bytes(p.payload) == b"x" * 16


@pytest.mark.parametrize(
    "raw, reason",
    [
        (v6(60, ext(0) + ext(17)), "hop-by-hop options not first"),
        (v6(43, bytes([17, 0, 0, 1]) + bytes(4)), "segments left"),
        (v6(60, bytes([17, 0, 0x42, 2, 0, 0, 1, 0])), "not understood"),  # discard-type option
        (v6(0, bytes([17, 0, 0xC2, 4, 0, 1, 0, 0])), "not understood"),  # jumbo payload
        (v6(60, bytes([17, 0, 1, 9, 0, 0, 0, 0])), "overruns"),
        (v6(60, bytes([17, 1]) + bytes(6)), "truncated"),
        (v6(60, bytes([17, 0, 0, 0])), "truncated"),
        (v6(44, bytes([44, 0, 0, 0]) + bytes(4) + bytes([17, 0, 0, 1]) + bytes(4)), "second"),
        (v6(44, bytes([17, 0, 0, 1]) + bytes(4) + b"x" * 7), "multiple of 8"),
        (v6(44, bytes([60, 0, 0, 1]) + bytes(4) + bytes([17, 1]) + bytes(6)), "truncated"),
        (v6(60, ext(60) * 8 + ext(17)), "too long"),
        (v6(44, struct.pack("!BxHI", 17, 65528, 1) + b"x" * 8), "65535"),
        (build_ipv6(bytes(16), bytes(16), 17, b"abc")[:42], "beyond buffer"),
        (b"\x40" + bytes(47), "not IPv6"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_chains(raw, reason):
    with pytest.raises(PacketError, match=reason):
        parse_ipv6(raw)


def test_first_fragment_must_hold_whole_chain():
    """RFC 7112: a first fragment whose header chain continues past it is refused."""
    frag = struct.pack("!BxHI", 60, 1, 5)  # offset 0, M=1
    with pytest.raises(PacketError):
        parse_ipv6(v6(44, frag + bytes([17, 2]) + bytes(14)))
    ok = parse_ipv6(v6(44, frag + ext(17) + bytes(8)))
    assert ok.is_fragment and ok.protocol == 60


@given(st.lists(st.sampled_from([60, 43]), max_size=5), st.booleans(), st.binary(max_size=300))
def test_random_chains(chain, hbh, payload):
    headers = ([0] if hbh else []) + chain
    raw_chain = b"".join(ext(nxt) for nxt in [*headers[1:], PROTO_UDP]) if headers else b""
    raw = v6(headers[0] if headers else PROTO_UDP, raw_chain + payload)
    p = parse_ipv6(raw)
    assert p.protocol == PROTO_UDP and p.header_len == 40 + 8 * len(headers)
    assert bytes(p.payload) == payload


@given(st.integers(0, 5000), st.integers(1280, 1500), st.booleans())
def test_fragment_ipv6_shape(size, mtu, with_ext):
    inner = bytes(i & 0xFF for i in range(size))
    first = 0 if with_ext else PROTO_UDP
    body = (ext(60) + ext(PROTO_UDP)) if with_ext else b""
    pkt = v6(first, body + inner)
    frags = [parse_ipv6(f) for f in fragment_ipv6(pkt, mtu, 0xABCD)]
    if len(pkt) <= mtu:
        assert [bytes(f.raw) for f in frags] == [pkt]
        return
    data = b""
    for i, f in enumerate(frags):
        assert len(f.raw) <= mtu and f.ident == 0xABCD and f.is_fragment
        assert f.frag_offset == len(data) and f.more_fragments == (i < len(frags) - 1)
        # hop-by-hop stays in every fragment (unfragmentable part); dest options do not
        assert f.header_len == (56 if with_ext else 48)
        data += bytes(f.payload)
    assert data == pkt[48 if with_ext else 40 :]


def test_fragment_ipv6_refuses_fragmented_input():
    raw = v6(44, frag_hdr(17, 0, 0, 1) + bytes(3000))
    with pytest.raises(PacketError):
        fragment_ipv6(raw, 1280, 2)
