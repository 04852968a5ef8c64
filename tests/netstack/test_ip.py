"""IPv4/IPv6 parse and build: round trips, malformed input, fragmentation."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.netstack.wire import (
    PROTO_UDP,
    FragmentationNeeded,
    PacketError,
    build_ipv4,
    build_ipv6,
    checksum,
    fragment_ipv4,
    fragment_ipv6,
    is_datagram,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
)

v4addr = st.binary(min_size=4, max_size=4)
v6addr = st.binary(min_size=16, max_size=16)
byte = st.integers(0, 255)
EXT = {0, 43, 44, 60}


@st.composite
def ipv4_options(draw):
    """Well-formed option lists (no source routes), ≤ 40 bytes once padded."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([1, 0x07, 0x44, 0x94, 0x82, 0x88, 0x19, 0x9E]))
        if kind == 1:
            opt = b"\x01"
        else:
            opt = bytes([kind, 0]) + draw(st.binary(max_size=6))
            opt = bytes([kind, len(opt)]) + opt[2:]
        if len(out) + len(opt) > 40:
            break
        out += opt
    return out


def fix_v4_checksum(pkt: bytearray) -> bytes:
    hl = (pkt[0] & 15) * 4
    pkt[10:12] = b"\x00\x00"
    pkt[10:12] = struct.pack("!H", checksum(bytes(pkt[:hl])))
    return bytes(pkt)


@given(
    v4addr,
    v4addr,
    byte,
    st.binary(max_size=2000),
    byte,
    st.integers(0, 0xFFFF),
    byte,
    st.booleans(),
    ipv4_options(),
)
def test_ipv4_round_trip(src, dst, proto, payload, ttl, ident, tos, df, options):
    pkt = build_ipv4(src, dst, proto, payload, ttl, ident, tos=tos, df=df, options=options)
    p = parse_ipv4(pkt)
    padded = options + b"\x00" * (-len(options) % 4)
    assert (p.version, p.src, p.dst, p.protocol, p.ttl, p.ident, p.tos) == (
        4, src, dst, proto, ttl, ident, tos,
    )  # fmt: skip
    assert p.dont_fragment == df and not p.more_fragments and not p.is_fragment
    assert p.frag_offset == 0 and p.header_len == 20 + len(padded) and p.nh_pos == 9
    assert bytes(p.payload) == payload and bytes(p.raw) == pkt
    assert bytes(p.header)[20:] == padded
    # WireGuard pads plaintext to 16 bytes: the total length field cuts the padding off.
    assert parse_ip(pkt + b"\x00" * 15) == p


@given(
    v6addr,
    v6addr,
    byte.filter(lambda n: n not in EXT),
    st.binary(max_size=2000),
    byte,
    byte,
    st.integers(0, 0xFFFFF),
)
def test_ipv6_round_trip(src, dst, nh, payload, hlim, tc, fl):
    pkt = build_ipv6(src, dst, nh, payload, hlim, traffic_class=tc, flow_label=fl)
    p = parse_ipv6(pkt)
    assert (p.version, p.src, p.dst, p.protocol, p.hop_limit, p.tos, p.flow_label) == (
        6, src, dst, nh, hlim, tc, fl,
    )  # fmt: skip
    assert not p.is_fragment and p.header_len == 40 and p.nh_pos == 6
    assert bytes(p.payload) == payload and bytes(p.raw) == pkt
    assert parse_ip(pkt + b"\x00" * 7) == p


A4, B4 = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 9])
GOOD4 = build_ipv4(A4, B4, PROTO_UDP, b"x" * 30)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (GOOD4[:19], "truncated"),
        (b"\x55" + GOOD4[1:], "not IPv4"),
        (fix_v4_checksum(bytearray(b"\x44" + GOOD4[1:])), "IHL"),
        (GOOD4[:-1], "beyond buffer"),
        (GOOD4[:10] + b"\x00\x00" + GOOD4[12:], "checksum"),
        (GOOD4[:2] + b"\x00\x10" + GOOD4[4:], "below header"),
        (b"\x20" + bytes(40), "version 2"),
        (bytes(39), "version 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_ipv4_malformed(raw, reason):
    with pytest.raises(PacketError):
        parse_ip(raw)


def test_ipv4_fragment_limits():
    def frag(offset8, mf, data, opts=b""):
        hl = 20 + len(opts)
        hdr = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x40 | hl // 4, 0, hl + len(data), 1,
                offset8 | (0x2000 if mf else 0), 64, 17, 0, A4, B4,
            )
        ) + opts  # fmt: skip
        return fix_v4_checksum(bytearray(hdr + data))

    assert parse_ipv4(frag(8188, False, b"x" * 11)).frag_offset == 65504
    with pytest.raises(PacketError, match="65535"):
        parse_ipv4(frag(8188, False, b"x" * 12))  # "ping of death"
    with pytest.raises(PacketError, match="multiple of 8"):
        parse_ipv4(frag(0, True, b"x" * 12))
    with pytest.raises(PacketError, match="source route"):
        parse_ipv4(frag(0, False, b"", bytes([0x83, 7, 4]) + bytes(5)))
    with pytest.raises(PacketError, match="option"):
        parse_ipv4(frag(0, False, b"", bytes([0x44, 9, 5, 0])))


@given(st.binary(max_size=120))
def test_garbage_raises_only_packet_error(data):
    for version_byte in (b"", b"\x45", b"\x60"):
        try:
            p = parse_ip(version_byte + data)
        except PacketError:
            continue
        assert p.header_len + len(p.payload) == len(p.raw) <= len(data) + 1


@given(st.binary(min_size=1, max_size=40), st.integers(0, 200), st.booleans())
def test_mutated_packets_raise_only_packet_error(noise, pos, v6):
    base = (
        build_ipv6(bytes(16), bytes(16), 0, b"\x11\x00\x01\x04" + bytes(4) + b"payload!")
        if v6
        else build_ipv4(A4, B4, 17, b"payload!", options=b"\x94\x04\x00\x00")
    )
    mutated = base[:pos] + noise + base[pos + len(noise) :]
    for truncated_ok in (False, True):
        try:
            parse_ip(mutated, truncated_ok=truncated_ok)
        except PacketError:
            pass


def test_parse_accepts_bytearray_and_memoryview():
    assert parse_ip(bytearray(GOOD4)) == parse_ip(memoryview(GOOD4)) == parse_ip(GOOD4)


def test_truncated_ok_for_icmp_quotes():
    p = parse_ip(GOOD4[:28], truncated_ok=True)
    assert len(p.payload) == 8
    with pytest.raises(PacketError):
        parse_ip(GOOD4[:19], truncated_ok=True)


def test_build_rejects_bad_arguments():
    with pytest.raises(PacketError):
        build_ipv4(b"\x00" * 3, B4, 17, b"")
    with pytest.raises(PacketError):
        build_ipv4(A4, B4, 17, bytes(65516))
    with pytest.raises(PacketError):
        build_ipv4(A4, B4, 17, b"", options=bytes(44))
    with pytest.raises(PacketError):
        build_ipv6(bytes(4), bytes(16), 17, b"")
    with pytest.raises(PacketError):
        build_ipv6(bytes(16), bytes(16), 17, bytes(65536))


# ------------------------------------------------------------------------- fragment_ipv4


def test_fragment_ipv4_df_and_small_packets():
    assert fragment_ipv4(GOOD4, 1500) == [GOOD4]
    big_df = build_ipv4(A4, B4, 17, bytes(2000), df=True)
    with pytest.raises(FragmentationNeeded) as e:
        fragment_ipv4(big_df, 1420)
    assert e.value.mtu == 1420 and isinstance(e.value, PacketError)
    with pytest.raises(PacketError, match="minimum"):
        fragment_ipv4(build_ipv4(A4, B4, 17, bytes(200)), 60)


@given(st.integers(0, 4000), st.integers(68, 1500), ipv4_options(), st.integers(0, 0xFFFF))
def test_fragment_ipv4_shape(size, mtu, options, ident):
    payload = bytes(i & 0xFF for i in range(size))
    pkt = build_ipv4(A4, B4, 17, payload, 30, ident, options=options)
    frags = [parse_ipv4(f) for f in fragment_ipv4(pkt, mtu)]
    orig = parse_ipv4(pkt)
    data = b""
    for i, f in enumerate(frags):
        assert len(f.raw) <= mtu and f.ident == ident and f.ttl == 30 and f.protocol == 17
        assert f.frag_offset == len(data)
        assert f.more_fragments == (i < len(frags) - 1)
        if i == 0:  # every option travels in the first fragment
            assert bytes(f.header)[20:] == bytes(orig.header)[20:]
        else:  # only options with the copy flag (0x80) travel in later fragments
            opts = bytes(f.header)[20:]
            i2 = 0
            while i2 < len(opts) and opts[i2] != 0:
                assert opts[i2] & 0x80 or opts[i2] == 1
                i2 += 1 if opts[i2] == 1 else opts[i2 + 1]
        data += bytes(f.payload)
    assert data == bytes(orig.payload)


# -- is_datagram: the batch order's class, read from the first header alone ----------------------

DATAGRAM_PROTOCOLS = {1, 17, 58}  # ICMP, UDP, ICMPv6


@given(v4addr, v4addr, byte, st.binary(max_size=64), ipv4_options(), st.integers(0, 0x1FFF))
def test_is_datagram_names_the_protocol_of_every_ipv4_piece(src, dst, proto, payload, options, off):
    whole = build_ipv4(src, dst, proto, payload, options=options)
    assert (
        is_datagram(whole)
        == (proto in DATAGRAM_PROTOCOLS)
        == (parse_ip(whole).protocol in DATAGRAM_PROTOCOLS)
    )
    # A later fragment carries no transport header, but its IP header still names the protocol:
    # all pieces of a datagram stay in one class.
    piece = bytearray(whole)
    struct.pack_into("!H", piece, 6, 0x2000 | off)  # MF and an offset
    assert is_datagram(bytes(piece)) == is_datagram(whole)


@given(v6addr, v6addr, byte, st.binary(max_size=64))
def test_is_datagram_reads_the_ipv6_next_header(src, dst, nh, payload):
    packet = build_ipv6(src, dst, nh, payload)
    if nh not in (0, 43, 44, 60):  # an extension header: the walk tells (below)
        assert is_datagram(packet) == (nh in DATAGRAM_PROTOCOLS)


def test_is_datagram_reads_ipv6_udp_through_extension_headers_and_short_input_is_not():
    hop_by_hop = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # then UDP: the same flow as plain UDP
    udp = build_ipv6(bytes(16), bytes(16), 0, hop_by_hop + bytes(8))
    assert parse_ip(udp).protocol == 17 and is_datagram(udp)
    tcp = build_ipv6(bytes(16), bytes(16), 0, bytes([6]) + hop_by_hop[1:] + bytes(20))
    assert parse_ip(tcp).protocol == 6 and not is_datagram(tcp)
    assert not is_datagram(build_ipv6(bytes(16), bytes(16), 0, hop_by_hop[:4]))  # truncated
    assert not is_datagram(b"") and not is_datagram(b"\x45" * 9)
    assert is_datagram(build_ipv4(bytes(4), bytes(4), 17, b"")[:10])


@given(
    v6addr,
    v6addr,
    st.sampled_from([6, 17, 58]),
    st.integers(0, 3000),
    st.integers(0, (1 << 32) - 1),
    st.sampled_from([b"", bytes([0, 0, 1, 4, 0, 0, 0, 0])]),
)
def test_every_ipv6_piece_is_in_the_class_of_the_whole(src, dst, proto, size, ident, options):
    """A client fragments a flow's big datagrams and not its small ones: the pieces (the later
    ones without a transport header) and the whole packet must be in one class, destination
    options (which go with the fragmentable part) or not."""
    if options:
        whole = build_ipv6(src, dst, 60, bytes([proto]) + options[1:] + bytes(8 + size))
    else:
        whole = build_ipv6(src, dst, proto, bytes(8 + size))
    pieces = fragment_ipv6(whole, 1280, ident)
    assert {is_datagram(p) for p in pieces} == {is_datagram(whole)}
    assert is_datagram(whole) == (proto != 6 and not options)


@given(st.binary(max_size=80))
def test_is_datagram_never_raises_and_agrees_with_the_parser(data):
    """Where no IPv6 extension header comes between, exactly the parser's protocol (the rule
    past them is the fuzz target's, `fuzz_ip_packets._class_protocol`)."""
    answer = is_datagram(data)
    try:
        p = parse_ip(data)
    except PacketError:
        return
    if p.nh_pos in (6, 9):
        assert answer == (p.protocol in DATAGRAM_PROTOCOLS)
