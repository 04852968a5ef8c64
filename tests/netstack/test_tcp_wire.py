"""TCP header and options: parse/build round trips, checksums against a slow reference, rejects."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given

from tether.netstack.wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    TcpError,
    build_reset_reply,
    build_segment,
    parse_segment,
    timestamped_builder,
)

V4 = (bytes([10, 0, 0, 1]), bytes([192, 168, 90, 2]))
V6 = (
    bytes.fromhex("fd000090000000000000000000000001"),
    bytes.fromhex("20010db8" + "00" * 11 + "07"),
)


def slow_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """RFC 1071 the textbook way: 16-bit words, end-around carry, one at a time."""
    if len(src) == 4:
        pseudo = src + dst + bytes([0, 6]) + struct.pack("!H", len(segment))
    else:
        pseudo = src + dst + struct.pack("!I", len(segment)) + bytes([0, 0, 0, 6])
    data = pseudo + segment + (b"\x00" if len(segment) % 2 else b"")
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def zeroed(segment: bytes) -> bytes:
    return segment[:16] + b"\x00\x00" + segment[18:]


addresses = st.sampled_from([V4, V6])
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.lists(st.tuples(u32, u32), max_size=4)


@given(
    addrs=addresses,
    sport=u16,
    dport=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=u16,
    payload=st.binary(max_size=3000),
    mss=st.none() | u16,
    wscale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=blocks,
    urgent=u16,
)
def test_build_parse_round_trip(
    addrs, sport, dport, seq, ack, flags, window, payload, mss, wscale, sack_permitted,
    timestamps, sack_blocks, urgent,
) -> None:  # fmt: skip
    src, dst = addrs
    try:
        data = build_segment(
            src, dst, sport, dport, seq, ack, flags, window, payload,
            mss=mss, wscale=wscale, sack_permitted=sack_permitted, timestamps=timestamps,
            sack_blocks=sack_blocks, urgent=urgent,
        )  # fmt: skip
    except TcpError:
        # Only an option list that cannot fit in 40 bytes is refused.
        opt = (4 if mss is not None else 0) + (4 if wscale is not None else 0)
        opt += 12 if timestamps is not None else (4 if sack_permitted else 0)
        opt += 4 + 8 * len(sack_blocks) if sack_blocks else 0
        assert opt > 40
        return
    assert len(data) % 4 == len(payload) % 4
    assert struct.unpack_from("!H", data, 16)[0] == slow_checksum(src, dst, zeroed(data))
    seg = parse_segment(src, dst, data)
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (sport, dport, seq, ack)
    assert (seg.flags, seg.window, seg.urgent) == (flags, window, urgent)
    assert seg.mss == mss
    assert seg.wscale == wscale
    assert seg.sack_permitted == sack_permitted
    assert (seg.tsval, seg.tsecr) == (timestamps or (None, None))
    assert list(seg.sack_blocks) == list(sack_blocks)
    assert bytes(seg.payload) == payload


@given(
    addrs=addresses,
    payload=st.binary(max_size=200),
    pos=st.integers(0, 10**6),
    bit=st.integers(0, 7),
)
def test_any_single_bit_flip_is_caught(addrs, payload, pos, bit) -> None:
    src, dst = addrs
    data = bytearray(build_segment(src, dst, 1, 2, 3, 4, ACK, 5, payload, timestamps=(6, 7)))
    data[pos % len(data)] ^= 1 << bit
    with pytest.raises(TcpError):
        parse_segment(src, dst, bytes(data))


@given(st.binary(max_size=100), addresses)
def test_arbitrary_bytes_only_raise_tcp_error(data, addrs) -> None:
    for verify in (True, False):
        try:
            seg = parse_segment(*addrs, data, verify_checksum=verify)
        except TcpError:
            continue
        assert isinstance(seg, Segment)


def raw(options: bytes, payload: bytes = b"", flags: int = ACK) -> bytes:
    """A segment with hand-made options and no valid checksum (parse with verify off)."""
    assert len(options) % 4 == 0
    hlen = 20 + len(options)
    return struct.pack("!HHIIBBHHH", 1, 2, 3, 4, hlen << 2, flags, 5, 0, 0) + options + payload


def parse_raw(data: bytes) -> Segment:
    return parse_segment(*V4, data, verify_checksum=False)


def test_fast_path_and_general_path_agree() -> None:
    ts = bytes([1, 1, 8, 10]) + struct.pack("!II", 111, 222)
    other = bytes([8, 10]) + struct.pack("!II", 111, 222) + bytes([1, 0])  # same option, moved
    assert (parse_raw(raw(ts)).tsval, parse_raw(raw(ts)).tsecr) == (111, 222)
    assert (parse_raw(raw(other)).tsval, parse_raw(raw(other)).tsecr) == (111, 222)


def test_unknown_options_are_skipped_and_eol_ends_the_list() -> None:
    opts = bytes([30, 6, 1, 2, 3, 4, 2, 4, 5, 180, 0, 3, 3, 7, 0, 0])
    seg = parse_raw(raw(opts))
    assert seg.mss == 1460
    assert seg.wscale is None  # after EOL


@pytest.mark.parametrize(
    "opts",
    [
        bytes([1, 1, 2, 4]),  # MSS running off the end
        bytes([2, 3, 5, 0]),  # MSS with a wrong length
        bytes([3, 4, 7, 0]),  # window scale with a wrong length
        bytes([4, 3, 0, 0]),  # SACK-permitted with a wrong length
        bytes([5, 2, 0, 0]),  # SACK without blocks
        bytes([5, 7]) + bytes(6) + bytes(4),  # SACK length not 2 + 8n
        bytes([8, 9]) + bytes(10),  # timestamps with a wrong length
        bytes([30, 1, 0, 0]),  # length below 2
        bytes([1, 1, 1, 30]),  # kind without a length byte
    ],
)
def test_malformed_options_raise(opts) -> None:
    with pytest.raises(TcpError):
        parse_raw(raw(opts))


def test_window_scale_above_14_is_clamped() -> None:
    assert parse_raw(raw(bytes([1, 3, 3, 20]))).wscale == 14


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(19),
        raw(b"")[:12] + bytes([0x40]) + raw(b"")[13:],
        raw(b"")[:12] + bytes([0xF0]) + raw(b"")[13:],
    ],
)
def test_truncated_or_bad_offset_raises(data) -> None:
    with pytest.raises(TcpError):
        parse_raw(data)


def test_mixed_address_families_raise() -> None:
    with pytest.raises(TcpError):
        parse_segment(V4[0], V6[1], build_segment(*V4, 1, 2, 3, 4, ACK, 5))


def test_oversized_option_list_is_refused() -> None:
    with pytest.raises(TcpError):
        build_segment(*V4, 1, 2, 3, 4, ACK, 5, timestamps=(1, 2), sack_blocks=[(1, 2)] * 4)


def test_seq_and_ack_wrap_modulo_2_32() -> None:
    seg = parse_segment(*V4, build_segment(*V4, 1, 2, 2**32 + 5, -1, ACK, 5))
    assert (seg.seq, seg.ack) == (5, 0xFFFFFFFF)


def test_seg_len_counts_syn_and_fin() -> None:
    assert Segment(1, 2, 0, 0, SYN | FIN, 0, b"abc").seg_len == 5
    assert Segment(1, 2, 0, 0, ACK | PSH, 0, b"abc").seg_len == 3


def test_payload_is_a_view_not_a_copy() -> None:
    data = build_segment(*V4, 1, 2, 3, 4, ACK, 5, b"hello")
    assert isinstance(parse_segment(*V4, data).payload, memoryview)


def test_reset_reply_for_an_ack_uses_its_ack_number() -> None:
    src, dst = V4
    seg = parse_segment(src, dst, build_segment(src, dst, 1000, 80, 77, 555, ACK, 9, b"xyz"))
    reply = parse_segment(dst, src, build_reset_reply(dst, src, seg))
    assert (reply.sport, reply.dport) == (80, 1000)
    assert (reply.seq, reply.flags) == (555, RST)


def test_reset_reply_for_a_syn_acknowledges_it() -> None:
    src, dst = V6
    seg = parse_segment(src, dst, build_segment(src, dst, 1000, 80, 0xFFFFFFFF, 0, SYN | FIN, 9))
    reply = parse_segment(dst, src, build_reset_reply(dst, src, seg))
    assert (reply.seq, reply.ack, reply.flags) == (0, 1, RST | ACK)


def test_no_reset_in_answer_to_a_reset() -> None:
    seg = parse_segment(*V4, build_segment(*V4, 1, 2, 3, 4, RST, 0))
    assert build_reset_reply(V4[1], V4[0], seg) is None


@given(
    addrs=addresses,
    sport=u16,
    dport=u16,
    seq=st.integers(0, 1 << 40),  # connections pass absolute sequence numbers
    ack=st.integers(0, 1 << 40),
    flags=st.integers(0, 0xFF),
    window=u16,
    payload=st.binary(max_size=3000),
    ts=st.tuples(u32, u32),
)
def test_the_timestamped_builder_equals_build_segment(
    addrs, sport, dport, seq, ack, flags, window, payload, ts
) -> None:
    """The download path's builder sums the header as integers instead of reading it: it must
    give the very bytes `build_segment` gives, checksum included (checked the textbook way)."""
    src, dst = addrs
    fast = timestamped_builder(src, dst, sport, dport)(seq, ack, flags, window, payload, *ts)
    assert fast == build_segment(src, dst, sport, dport, seq, ack, flags, window, payload,
                                 timestamps=ts)  # fmt: skip
    assert struct.unpack_from("!H", fast, 16)[0] == slow_checksum(src, dst, zeroed(fast))
