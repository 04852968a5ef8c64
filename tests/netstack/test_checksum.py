"""The fast big-integer checksum against a word-by-word RFC 1071 reference."""

import struct

from hypothesis import given
from hypothesis import strategies as st

from tether.netstack.wire import checksum, ones_sum, pseudo_header_sum, transport_checksum


def ref_ones_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 §4.1, literally: add 16-bit words, fold the carries back in."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes, initial: int = 0) -> int:
    return ~ref_ones_sum(data, initial) & 0xFFFF


def ref_pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


addr_pair = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_ones_sum_matches_reference(data, initial):
    assert ones_sum(data, initial) == ref_ones_sum(data, initial)
    assert checksum(data, initial) == ref_checksum(data, initial)
    assert ones_sum(memoryview(data)) == ref_ones_sum(data)


@given(st.binary(max_size=1500))
def test_checksum_verifies_to_zero(data):
    data += b"\x00" * (len(data) & 1)
    c = checksum(data)
    assert checksum(data + struct.pack("!H", c)) == 0


@given(addr_pair, st.integers(0, 255), st.binary(max_size=2000))
def test_pseudo_header_and_transport_checksum(addrs, proto, segment):
    src, dst = addrs
    assert pseudo_header_sum(src, dst, proto, len(segment)) == ref_ones_sum(
        ref_pseudo(src, dst, proto, len(segment))
    )
    expect = ref_checksum(ref_pseudo(src, dst, proto, len(segment)) + segment)
    assert transport_checksum(src, dst, proto, segment) == expect
