"""Our packet bytes against an independent implementation (scapy), both directions.

Skipped when scapy is missing so the rest of the suite never depends on it; it belongs in the
test extra.
"""

import ipaddress
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tether.netstack.wire import (
    PROTO_AH,
    PROTO_UDP,
    IcmpError,
    Reassembler,
    build_echo,
    build_error,
    build_ipv4,
    build_ipv6,
    build_udp,
    build_udp_packet,
    fragment_ipv4,
    fragment_ipv6,
    parse_icmp,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
    parse_udp,
)

pytest.importorskip("scapy")
from scapy.layers.inet import (  # noqa: E402
    ICMP,
    IP,
    UDP,
    IPerror,
    UDPerror,
    defragment,
    fragment,
)
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    fragment6,
)
from scapy.layers.ipsec import AH  # noqa: E402
from scapy.packet import Raw  # noqa: E402

v4addr = st.binary(min_size=4, max_size=4)
v6addr = st.binary(min_size=16, max_size=16)
byte = st.integers(0, 255)
port = st.integers(0, 0xFFFF)
A4, B4 = bytes([10, 0, 0, 1]), bytes([93, 184, 216, 34])
A6, B6 = bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"


def text(a: bytes) -> str:
    return str(ipaddress.ip_address(a))


def feed(r, packets):
    return [out for p in packets if (out := r.push(p, 0.0)) is not None]


# ---------------------------------------------------------------------------------- IP


@given(v4addr, v4addr, byte, st.binary(max_size=600), byte, port, byte, st.booleans())
def test_ipv4_build_matches_scapy(src, dst, proto, payload, ttl, ident, tos, df):
    ours = build_ipv4(src, dst, proto, payload, ttl, ident, tos=tos, df=df)
    theirs = IP(src=text(src), dst=text(dst), proto=proto, ttl=ttl, id=ident, tos=tos,
                flags="DF" if df else 0) / Raw(payload)  # fmt: skip
    assert ours == bytes(theirs)


@given(v4addr, v4addr, st.integers(0, 0x1FFF), st.sampled_from([0, 1, 2]), st.binary(max_size=64))
def test_ipv4_parse_agrees_with_scapy(src, dst, frag, flags, payload):
    payload = payload[: len(payload) & ~7] if flags & 1 else payload
    assume(frag * 8 + len(payload) + 20 <= 65535)
    raw = bytes(IP(src=text(src), dst=text(dst), frag=frag, flags=flags) / Raw(payload))
    p = parse_ipv4(raw)
    assert (p.src, p.dst) == (src, dst)
    assert p.frag_offset == frag * 8 and p.more_fragments == bool(flags & 1)
    assert p.dont_fragment == bool(flags & 2) and p.is_fragment == bool(frag or flags & 1)
    assert bytes(p.payload) == payload


@given(v6addr, v6addr, byte.filter(lambda n: n not in {0, 43, 44, 60}), st.binary(max_size=600),
       byte, byte, st.integers(0, 0xFFFFF))  # fmt: skip
def test_ipv6_build_matches_scapy(src, dst, nh, payload, hlim, tc, fl):
    ours = build_ipv6(src, dst, nh, payload, hlim, traffic_class=tc, flow_label=fl)
    theirs = IPv6(src=text(src), dst=text(dst), nh=nh, hlim=hlim, tc=tc, fl=fl) / Raw(payload)
    assert ours == bytes(theirs)


@pytest.mark.parametrize(
    "layers",
    [
        [IPv6ExtHdrHopByHop()],
        [IPv6ExtHdrHopByHop(options=[RouterAlert()])],
        [IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 9)])],
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(segleft=0)],
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(segleft=0), IPv6ExtHdrDestOpt()],
        [IPv6ExtHdrFragment(offset=0, m=0, id=7)],
        [IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(id=9), IPv6ExtHdrDestOpt()],
    ],
    ids=lambda layers: "/".join(type(x).__name__ for x in layers),
)
def test_scapy_extension_chains_reach_udp(layers):
    pkt = IPv6(src="fd00::1", dst="2001:db8::2")
    for layer in layers:
        pkt = pkt / layer
    raw = bytes(pkt / UDP(sport=1, dport=2) / Raw(b"data"))
    p = parse_ipv6(raw)
    assert p.protocol == PROTO_UDP and p.header_len == len(raw) - 12 and not p.is_fragment
    assert raw[p.nh_pos] == PROTO_UDP
    assert parse_udp(p).dst_port == 2


def test_scapy_ah_is_reported_not_skipped():
    raw = bytes(IPv6() / IPv6ExtHdrHopByHop() / AH(nh=17, icv=b"\x00" * 12) / UDP())
    assert parse_ipv6(raw).protocol == PROTO_AH


@given(st.lists(st.sampled_from([60, 43]), max_size=4), st.booleans(), st.binary(max_size=300))
def test_random_scapy_chains(chain, hbh, payload):
    pkt = IPv6(src="fd00::1", dst="2001:db8::2")
    if hbh:
        pkt = pkt / IPv6ExtHdrHopByHop()
    for nh in chain:
        pkt = pkt / (IPv6ExtHdrDestOpt() if nh == 60 else IPv6ExtHdrRouting(segleft=0))
    raw = bytes(pkt / UDP(sport=7, dport=9) / Raw(payload))
    p = parse_ipv6(raw)
    assert p.protocol == PROTO_UDP and bytes(parse_udp(p).payload) == payload


# --------------------------------------------------------------------------- fragments


@given(st.integers(1, 6000), st.integers(68, 1500))
def test_our_ipv4_fragments_read_and_defragment_in_scapy(size, mtu):
    raw = build_udp_packet(A4, B4, 1, 2, bytes(i & 0xFF for i in range(size)), ident=9)
    frags = fragment_ipv4(raw, mtu)
    for f in frags:
        s = IP(f)
        p = parse_ipv4(f)
        assert s.frag * 8 == p.frag_offset and bool(s.flags.MF) == p.more_fragments
        assert IP(bytes(s)).chksum == s.chksum
    assert bytes(defragment([IP(f) for f in frags])[0]) == raw


@given(st.integers(1, 6000), st.integers(1280, 1500))
def test_our_ipv6_fragments_read_in_scapy(size, mtu):
    raw = build_udp_packet(A6, B6, 1, 2, bytes(i & 0xFF for i in range(size)))
    for f in fragment_ipv6(raw, mtu, 77):
        s = IPv6(f)
        p = parse_ipv6(f)
        if p.is_fragment:
            fh = s[IPv6ExtHdrFragment]
            assert fh.offset * 8 == p.frag_offset and fh.m == p.more_fragments and fh.id == 77


def test_scapy_fragments_reassemble():
    payload = random.Random(2).randbytes(5000)
    orig = IP(src="10.0.0.1", dst="93.184.216.34", id=31) / UDP(sport=1, dport=2) / Raw(payload)
    outs = feed(Reassembler(), [parse_ip(bytes(f)) for f in reversed(fragment(orig, 1000))])
    assert len(outs) == 1 and bytes(outs[0].raw) == bytes(orig)

    orig6 = IPv6(src="fd00::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / Raw(payload)
    to_split = IPv6(src="fd00::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=5) / orig6.payload
    outs = feed(Reassembler(), [parse_ip(bytes(f)) for f in fragment6(to_split, 1280)])
    assert len(outs) == 1 and bytes(outs[0].raw) == bytes(orig6)


# ------------------------------------------------------------------------------- UDP


@given(st.booleans(), port, port, st.binary(max_size=1500))
def test_udp_matches_scapy(v6, sport, dport, payload):
    src, dst = (A6, B6) if v6 else (A4, B4)
    pkt = build_udp_packet(src, dst, sport, dport, payload)
    ip = IPv6(src=text(src), dst=text(dst)) if v6 else IP(src=text(src), dst=text(dst), id=0)
    assert pkt == bytes(ip / UDP(sport=sport, dport=dport) / Raw(payload))


@pytest.mark.parametrize("v6", [False, True])
def test_udp_zero_checksum_sent_as_ffff_like_scapy(v6):
    from tether.netstack.wire import pseudo_header_sum

    src, dst = (A6, B6) if v6 else (A4, B4)
    x = -(pseudo_header_sum(src, dst, 17, 10) + 1 + 2 + 10) % 0xFFFF
    payload = x.to_bytes(2, "big")
    seg = build_udp(src, dst, 1, 2, payload)
    ip = IPv6(src=text(src), dst=text(dst)) if v6 else IP(src=text(src), dst=text(dst))
    assert seg[6:8] == b"\xff\xff"
    assert bytes(ip / UDP(sport=1, dport=2) / Raw(payload))[-10:] == seg


# ------------------------------------------------------------------------------ ICMP


@given(port, port, st.binary(max_size=1400), st.booleans(), st.booleans())
def test_echo_matches_scapy(ident, seq, data, reply, v6):
    if v6:
        pkt = build_echo(A6, B6, ident, seq, data, reply=reply)
        cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
        theirs = IPv6(src=text(A6), dst=text(B6)) / cls(id=ident, seq=seq, data=data)
    else:
        pkt = build_echo(A4, B4, ident, seq, data, reply=reply)
        theirs = IP(src=text(A4), dst=text(B4), id=0) / ICMP(
            type=0 if reply else 8, id=ident, seq=seq
        ) / Raw(data)  # fmt: skip
    assert pkt == bytes(theirs)


@pytest.mark.parametrize("kind", list(IcmpError))
def test_ipv4_errors_read_in_scapy(kind):
    off = parse_ip(build_udp_packet(B4, A4, 5353, 9, bytes(3000)))
    pkt = build_error(off, A4, kind, mtu=1400)
    m = parse_icmp(parse_ip(pkt))
    s = IP(pkt)
    assert s[ICMP].type == m.type and s[ICMP].code == m.code and s[IPerror].src == text(B4)
    assert s[UDPerror].sport == 5353
    assert IP(bytes(s)).chksum == s.chksum
    stored = s[ICMP].chksum
    del s[ICMP].chksum
    assert IP(bytes(s))[ICMP].chksum == stored


_V6_LAYER = {1: ICMPv6DestUnreach, 2: ICMPv6PacketTooBig, 3: ICMPv6TimeExceeded,
             4: ICMPv6ParamProblem}  # fmt: skip


@pytest.mark.parametrize("kind", list(IcmpError))
def test_ipv6_errors_read_in_scapy(kind):
    off = parse_ip(build_udp_packet(B6, A6, 5353, 9, bytes(3000)))
    pkt = build_error(off, A6, kind, mtu=1280)
    m = parse_icmp(parse_ip(pkt))
    s = IPv6(pkt)
    layer = s[_V6_LAYER[m.type]]
    assert layer.code == m.code and s[IPerror6].src == text(B6)
    stored = layer.cksum
    del layer.cksum
    assert IPv6(bytes(s))[_V6_LAYER[m.type]].cksum == stored
    if kind is IcmpError.TOO_BIG:
        assert layer.mtu == 1280
    if kind is IcmpError.PROTOCOL_UNREACHABLE:
        assert layer.ptr == 6
