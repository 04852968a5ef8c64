"""Wire format: layouts, strict parsing, round trips, and the fuzz target's no-crash contract."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.wireguard import constants as c
from tether.wireguard.messages import (
    CookieReply,
    Initiation,
    MessageError,
    Response,
    Transport,
    message_type,
    pack_transport,
    pack_transport_header_into,
    parse,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    parse_transport,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def blob(n: int):
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(Initiation, u32, blob(32), blob(48), blob(28), blob(16), blob(16))
responses = st.builds(Response, u32, u32, blob(32), blob(16), blob(16), blob(16))
cookie_replies = st.builds(CookieReply, u32, blob(24), blob(32))
transports = st.builds(Transport, u32, u64, st.binary(min_size=16, max_size=200))


def test_layout_matches_wireguard_go():
    msg = Initiation(0x04030201, b"E" * 32, b"S" * 48, b"T" * 28, b"1" * 16, b"2" * 16).pack()
    assert len(msg) == c.MESSAGE_INITIATION_SIZE == 148
    assert msg[:8] == bytes([1, 0, 0, 0, 1, 2, 3, 4])
    assert msg[8:40] == b"E" * 32 and msg[40:88] == b"S" * 48 and msg[88:116] == b"T" * 28
    assert msg[116:132] == b"1" * 16 and msg[132:148] == b"2" * 16
    assert Initiation.MAC1_OFFSET == 116

    msg = Response(5, 6, b"E" * 32, b"X" * 16, b"1" * 16, b"2" * 16).pack()
    assert len(msg) == 92
    assert struct.unpack_from("<III", msg) == (2, 5, 6)
    assert msg[12:44] == b"E" * 32 and msg[44:60] == b"X" * 16 and msg[60:76] == b"1" * 16
    assert Response.MAC1_OFFSET == 60

    msg = CookieReply(7, b"N" * 24, b"C" * 32).pack()
    assert len(msg) == 64 and struct.unpack_from("<II", msg) == (3, 7)
    assert msg[8:32] == b"N" * 24 and msg[32:] == b"C" * 32

    msg = pack_transport(8, 2**64 - 1, b"D" * 16)
    assert msg[:16] == struct.pack("<IIQ", 4, 8, 2**64 - 1)
    buf = bytearray(32)
    pack_transport_header_into(buf, 8, 2**64 - 1)
    assert bytes(buf[:16]) == msg[:16]


@given(initiations)
def test_initiation_round_trip(msg):
    data = msg.pack()
    assert parse_initiation(data) == msg == parse(data)
    assert parse_initiation(memoryview(data)) == msg
    assert message_type(data) == c.MESSAGE_INITIATION


@given(responses)
def test_response_round_trip(msg):
    data = msg.pack()
    assert parse_response(bytearray(data)) == msg == parse(data)


@given(cookie_replies)
def test_cookie_reply_round_trip(msg):
    assert parse_cookie_reply(msg.pack()) == msg == parse(msg.pack())


@given(transports)
def test_transport_round_trip(msg):
    data = msg.pack()
    assert parse_transport(memoryview(data)) == (msg.receiver, msg.counter)
    assert parse(data) == msg


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_error(data):
    for parser in (parse, parse_initiation, parse_response, parse_cookie_reply, parse_transport):
        try:
            parser(data)
        except MessageError:
            pass


@given(st.one_of(initiations, responses, cookie_replies, transports), st.data())
def test_nonzero_reserved_bytes_or_wrong_length_rejected(msg, data):
    raw = bytearray(msg.pack())
    i = data.draw(st.integers(1, 3))
    raw[i] = data.draw(st.integers(1, 255))
    with pytest.raises(MessageError):
        parse(bytes(raw))
    raw = msg.pack()
    if not isinstance(msg, Transport):
        with pytest.raises(MessageError):
            parse(raw + b"\x00")
    with pytest.raises(MessageError):
        parse(raw[: data.draw(st.integers(0, 31))])


def test_parsers_refuse_other_types():
    init = Initiation(1, bytes(32), bytes(48), bytes(28)).pack()
    for parser in (parse_response, parse_cookie_reply, parse_transport):
        with pytest.raises(MessageError):
            parser(init)
    with pytest.raises(MessageError):
        parse_initiation(bytes([2]) + init[1:])
    with pytest.raises(MessageError):
        message_type(struct.pack("<I", 5) + bytes(60))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Initiation(2**32, bytes(32), bytes(48), bytes(28)),
        lambda: Initiation(-1, bytes(32), bytes(48), bytes(28)),
        lambda: Initiation(0, bytes(31), bytes(48), bytes(28)),
        lambda: Response(0, 0, bytes(32), bytes(15)),
        lambda: CookieReply(0, bytes(12), bytes(32)),
        lambda: Transport(0, 2**64, bytes(16)),
        lambda: Transport(0, 0, bytes(15)),
        lambda: pack_transport(2**32, 0, bytes(16)),
    ],
)
def test_building_checks_field_sizes(build):
    with pytest.raises(MessageError):
        build()


# --- the fuzz target, as a smoke test ----------------------------------------------------------


def test_fuzz_target_smoke(fuzz_target):
    """A few hundred random and mutated datagrams; any exception escaping is a bug."""
    target = fuzz_target("fuzz_wire_messages")
    rng = random.Random(0x7E7E)
    for seed in target.SEEDS:
        target.TestOneInput(seed)
    for _ in range(300):
        target.TestOneInput(os.urandom(rng.choice((0, 3, 4, 31, 32, 64, 92, 148, 200))))
    for _ in range(300):
        data = bytearray(rng.choice(target.SEEDS))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        target.TestOneInput(bytes(data))
