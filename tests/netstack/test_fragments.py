"""Fragment reassembly: any order, duplicates, overlaps, bounds and timers (fake clock)."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.netstack.wire import (
    PIECE_OVERHEAD,
    PacketError,
    Reassembler,
    build_ipv4,
    build_ipv6,
    build_udp_packet,
    checksum,
    fragment_ipv4,
    fragment_ipv6,
    parse_ip,
    parse_udp,
)

A4, B4 = bytes([10, 0, 0, 1]), bytes([93, 184, 216, 34])
A6, B6 = bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"


def frag4(offset, mf, data, ident=1, proto=17, src=A4):
    hdr = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident,
                    (offset >> 3) | (0x2000 if mf else 0), 64, proto, 0, src, B4)
    )  # fmt: skip
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    return parse_ip(bytes(hdr) + data)


def frag6(offset, mf, data, ident=1, nh=17):
    return parse_ip(build_ipv6(A6, B6, 44, struct.pack("!BxHI", nh, offset | mf, ident) + data))


def whole(data, v6=False, ident=1):
    """The datagram the fragments of `data` reassemble to."""
    if v6:
        return build_ipv6(A6, B6, 17, data)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, 0, 64, 17, 0,
                                A4, B4))  # fmt: skip
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    return bytes(hdr) + data


def feed(r, packets, now=0.0):
    return [out for p in packets if (out := r.push(p, now)) is not None]


def test_3000_byte_udp_datagram_in_three_fragments():
    payload = bytes(random.Random(1).randbytes(3000 - 28))
    pkt = build_udp_packet(A4, B4, 40000, 53, payload, ident=4242)
    frags = fragment_ipv4(pkt, 1100)
    assert len(frags) == 3
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]):
        r = Reassembler()
        outs = [r.push(parse_ip(frags[k]), 1.0) for k in order]
        assert outs[:2] == [None, None]
        assert bytes(outs[2].raw) == pkt and not outs[2].is_fragment
        assert bytes(parse_udp(outs[2]).payload) == payload
        assert r.bytes == 0 and len(r) == 0 and r.reassembled == 1


def test_non_fragments_pass_through():
    p = parse_ip(build_ipv4(A4, B4, 17, b"x"))
    assert Reassembler().push(p, 0.0) is p


@st.composite
def split(draw, max_len=4000):
    """A datagram body and a cut into 8-aligned fragments."""
    n = draw(st.integers(1, max_len))
    data = bytes(draw(st.randoms()).randbytes(n))
    cuts = sorted(draw(st.sets(st.integers(1, (n - 1) // 8), max_size=20))) if n > 8 else []
    bounds = [0, *(c * 8 for c in cuts), n]
    return data, [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


@given(split(), st.booleans(), st.randoms(), st.integers(0, 5))
def test_any_order_with_duplicates_gives_exact_datagram(sd, v6, rnd, dups):
    data, spans = sd
    mk = frag6 if v6 else frag4
    packets = [mk(s, e < len(data), data[s:e]) for s, e in spans]
    # One span is no fragment (for IPv6 an atomic fragment, RFC 6946): it passes through as is.
    expect = bytes(packets[0].raw) if len(spans) == 1 else whole(data, v6)
    packets += [rnd.choice(packets) for _ in range(dups)]
    rnd.shuffle(packets)
    r = Reassembler()
    outs = feed(r, packets)
    # Duplicates after completion start a new (incomplete) datagram; the first output is exact.
    assert outs and all(bytes(o.raw) == expect for o in outs)
    r.expire(1e9)
    assert r.bytes == 0 and len(r) == 0


@st.composite
def overlapping(draw):
    """Random 8-aligned spans covering [0, n), overlapping freely, some carrying wrong bytes."""
    n = draw(st.integers(9, 3000))
    data = bytes(draw(st.randoms()).randbytes(n))
    spans = []
    for _ in range(draw(st.integers(1, 12))):
        s = draw(st.integers(0, (n - 1) // 8)) * 8
        e = min(n, s + draw(st.integers(1, 200)) * 8)
        spans.append((s, e, draw(st.booleans()) and draw(st.booleans())))
    # make sure the union covers everything, so completion is possible
    spans += [(s, min(n, s + 512), False) for s in range(0, n, 512)]
    return data, spans


@given(overlapping(), st.booleans(), st.randoms())
@settings(max_examples=200)
def test_overlaps_give_consistent_datagram_or_nothing(ov, v6, rnd):
    """Corrupted fragments are indistinguishable from good ones unless they overlap something;
    what must never happen is output that disagrees with any fragment it was built from."""
    data, spans = ov
    mk = frag6 if v6 else frag4
    packets = []
    for s, e, corrupt in spans:
        chunk = bytearray(data[s:e])
        if corrupt:
            chunk[rnd.randrange(len(chunk))] ^= 0xFF
        packets.append((s, bytes(chunk), mk(s, e < len(data), bytes(chunk))))
    rnd.shuffle(packets)
    r = Reassembler()
    since, outs = [], []
    for s, chunk, p in packets:
        out = r.push(p, 0.0)
        if out is p:  # a span of everything is no fragment at all
            continue
        since.append((s, chunk))
        if out is not None:
            body = bytes(out.payload)
            assert len(body) == len(data)
            assert all(body[s : s + len(c)] == c for s, c in since)
            outs.append(body)
            since = []
    whole_span = any(s == 0 and e == len(data) for s, e, _ in spans)
    if not v6 and not whole_span and not any(c for _, _, c in spans):
        assert outs and outs[0] == data  # consistent IPv4 overlaps always complete
    r.expire(1e9)
    assert r.bytes == 0


def test_ipv4_identical_overlap_is_merged():
    data = bytes(range(256)) * 4
    r = Reassembler()
    assert r.push(frag4(0, True, data[:512]), 0) is None
    assert r.push(frag4(256, True, data[256:768]), 0) is None  # overlaps, same bytes
    out = r.push(frag4(768, False, data[768:]), 0)
    assert bytes(out.raw) == whole(data)


def test_ipv4_conflicting_overlap_drops_datagram_and_later_fragments():
    data = bytes(1024)
    r = Reassembler()
    r.push(frag4(0, True, data[:512]), 0)
    r.push(frag4(256, True, b"\x01" * 512), 0)
    assert r.discarded == 1
    assert r.push(frag4(512, False, data[512:]), 0) is None
    assert r.push(frag4(0, True, data[:512]), 0) is None
    assert r.expire(31.0) == []  # silently, no time-exceeded for a discarded datagram


def test_ipv6_any_overlap_drops_datagram_rfc5722():
    data = bytes(1024)
    r = Reassembler()
    r.push(frag6(0, True, data[:512]), 0)
    assert r.push(frag6(0, True, data[:512]), 0) is None  # exact duplicate: kept
    assert r.discarded == 0
    r.push(frag6(256, True, data[256:768]), 0)  # same bytes, still an overlap
    assert r.discarded == 1
    assert r.push(frag6(512, False, data[512:]), 0) is None
    assert r.push(frag6(768, False, data[768:]), 0) is None


def test_inconsistent_ends_drop():
    r = Reassembler()
    r.push(frag4(8, False, bytes(8)), 0)
    r.push(frag4(16, False, bytes(8)), 0)  # a second, different end
    assert r.discarded == 1
    r2 = Reassembler()
    r2.push(frag4(16, False, bytes(8), ident=2), 0)
    r2.push(frag4(16, True, bytes(16), ident=2), 0)  # data past the end
    assert r2.discarded == 1


def test_ipv6_next_header_from_first_fragment_and_chain_walked_after_reassembly():
    """Per RFC 8200 only the first fragment's next header counts; the reassembled fragmentable
    part may start with further extension headers, which are walked."""
    inner = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # destination options, PadN, then UDP
    udp = build_udp_packet(A6, B6, 5, 6, bytes(2000))[40:]
    body = inner + udp
    r = Reassembler()
    r.push(frag6(1024, False, body[1024:], nh=6), 0)  # bogus nh in a later fragment is ignored
    out = r.push(frag6(0, True, body[:1024], nh=60), 0)
    assert out.protocol == 17 and out.header_len == 48
    assert parse_udp(out).dst_port == 6


@given(split(max_len=6000), st.integers(0, 3), st.randoms())
def test_memory_bounds_hold(sd, extra, rnd):
    data, spans = sd
    r = Reassembler(max_bytes=6000, max_datagrams=3)
    packets = []
    for ident in range(1 + extra * 2):
        packets += [frag4(s, e < len(data), data[s:e], ident=ident) for s, e in spans]
    rnd.shuffle(packets)
    for p in packets:
        out = r.push(p, 0.0)
        assert r.bytes <= 6000 and len(r) <= 3
        if out is not None:
            assert bytes(out.payload) == data
    r.expire(1e9)
    assert r.bytes == 0 and len(r) == 0


def test_fragment_count_bound():
    r = Reassembler(max_fragments=4)
    for k in range(5):
        r.push(frag4(k * 16, True, bytes(8)), 0)
    assert r.discarded == 1


def test_eviction_prefers_oldest():
    r = Reassembler(max_datagrams=2)
    r.push(frag4(0, True, bytes(8), ident=1), 0.0)
    r.push(frag4(0, True, bytes(8), ident=2), 1.0)
    r.push(frag4(0, True, bytes(8), ident=3), 2.0)
    assert r.evicted == 1 and len(r) == 2
    assert r.push(frag4(8, False, bytes(8), ident=2), 2.0) is not None
    assert r.push(frag4(8, False, bytes(8), ident=1), 2.0) is None  # 1 was evicted


def test_timeouts_with_fake_clock():
    r = Reassembler()
    r.push(frag4(0, True, b"a" * 16, ident=1), 100.0)  # first fragment: reported on timeout
    r.push(frag4(16, False, b"b" * 8, ident=2), 101.0)  # no first fragment: silent
    r.push(frag6(0, True, b"c" * 16), 102.0)
    assert r.next_deadline() == 130.0
    assert r.expire(129.9) == []
    reports = r.expire(131.0)
    assert [(p.version, p.ident, bytes(p.payload)) for p in reports] == [(4, 1, b"a" * 16)]
    assert r.timed_out == 2 and r.next_deadline() == 162.0
    # a late fragment of a timed-out datagram starts afresh and cannot complete it
    assert r.push(frag4(16, False, b"a" * 8, ident=1), 131.0) is None
    (p6,) = r.expire(162.0)
    assert p6.version == 6 and p6.is_fragment and bytes(p6.payload) == b"c" * 16
    r.expire(1e9)
    assert r.bytes == 0 and r.next_deadline() is None


def test_push_expires_stale_state_first():
    r = Reassembler(timeout_v4=5.0)
    r.push(frag4(0, True, b"a" * 8), 0.0)
    assert r.push(frag4(8, False, b"b" * 8), 6.0) is None  # the old half is gone
    assert len(r.expire(6.0)) == 1


def test_oversized_reassembly_is_dropped():
    r2 = Reassembler(max_datagram_bytes=1000)
    r2.push(frag4(0, True, bytes(512)), 0)
    assert r2.push(frag4(512, False, bytes(600)), 0) is None and r2.discarded == 1
    # IPv6: unfragmentable part + data must fit 65535 (parse refuses the fragment)
    with pytest.raises(PacketError):
        frag6(65528, False, bytes(16))


@given(st.integers(1, 9000), st.integers(68, 1500), st.randoms())
def test_fragment_ipv4_then_reassemble(size, mtu, rnd):
    payload = bytes(rnd.randbytes(size))
    pkt = build_ipv4(A4, B4, 17, payload, 7, 999, options=b"\x94\x04\x00\x00\x07\x03\x04\x00")
    frags = fragment_ipv4(pkt, mtu)
    rnd.shuffle(frags)
    r = Reassembler(max_fragments=1024)
    outs = feed(r, [parse_ip(f) for f in frags])
    assert len(outs) == 1 and bytes(outs[0].raw) == pkt


@given(st.integers(1, 9000), st.integers(1280, 1500), st.randoms())
def test_fragment_ipv6_then_reassemble(size, mtu, rnd):
    hbh = bytes([60, 0, 1, 4, 0, 0, 0, 0])
    dst_opts = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    pkt = build_ipv6(A6, B6, 0, hbh + dst_opts + bytes(rnd.randbytes(size)))
    frags = fragment_ipv6(pkt, mtu, 77)
    rnd.shuffle(frags)
    outs = feed(Reassembler(), [parse_ip(f) for f in frags])
    assert len(outs) == 1 and bytes(outs[0].raw) == pkt
    assert outs[0].protocol == 17 and outs[0].header_len == 56


def test_piece_overhead_is_charged():
    r = Reassembler()
    r.push(frag4(8, True, bytes(8)), 0)
    assert r.bytes == 2 * PIECE_OVERHEAD + 8
