"""mac1 / mac2 / cookie replies: byte ranges, the under-load round trip, and expiry."""

from __future__ import annotations

import itertools

import pytest

from tether import keys
from tether.wireguard.constants import COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1
from tether.wireguard.cookie import (
    CookieChecker,
    CookieError,
    CookieGenerator,
    address_bytes,
    compute_mac1,
    cookie_key,
    mac1_key,
)
from tether.wireguard.crypto import hash_, mac, tai64n, xaead_decrypt
from tether.wireguard.messages import MessageError, Response, parse_cookie_reply, parse_initiation
from tether.wireguard.noise import LocalIdentity, PeerKeys, create_initiation

SRC = address_bytes("192.0.2.7", 51820)
OTHER_SRC = address_bytes("192.0.2.8", 51820)


def counting_random():
    counter = itertools.count(1)
    return lambda n: bytes([next(counter) % 256]) * n


@pytest.fixture
def setup():
    responder = LocalIdentity(keys.clamp(b"\x21" * 32))
    initiator = LocalIdentity(keys.clamp(b"\x42" * 32))
    peer = PeerKeys(initiator, responder.spub)
    checker = CookieChecker(responder.spub, random=counting_random())
    generator = CookieGenerator(responder.spub)
    return responder, peer, checker, generator


def initiation_bytes(peer, wall=1.0):
    return create_initiation(peer, tai64n(wall), sender=0xAABBCCDD)[0].pack()


def test_mac_keys_and_byte_ranges(setup):
    responder, peer, _, generator = setup
    assert mac1_key(responder.spub) == hash_(LABEL_MAC1 + responder.spub)
    assert cookie_key(responder.spub) == hash_(LABEL_COOKIE + responder.spub)
    wire = generator.add_macs(initiation_bytes(peer), 0.0)
    # mac1 covers everything before it (wireguard-go CookieGenerator.AddMacs: msg[:smac1])
    assert wire[116:132] == mac(mac1_key(responder.spub), wire[:116])
    assert compute_mac1(mac1_key(responder.spub), wire) == wire[116:132]
    assert wire[132:] == bytes(16)  # no cookie yet: mac2 is zero
    assert parse_initiation(wire).mac1 == wire[116:132]


def test_mac1_check(setup):
    responder, peer, checker, generator = setup
    wire = generator.add_macs(initiation_bytes(peer), 0.0)
    assert checker.check_mac1(wire)
    assert not checker.check_mac1(wire[:20] + bytes([wire[20] ^ 1]) + wire[21:])  # a bit flipped
    assert not CookieChecker(peer.local.spub).check_mac1(wire)  # keyed on the receiver's spub
    with pytest.raises(MessageError):
        checker.check_mac1(wire[:100])


def test_under_load_cookie_round_trip(setup):
    responder, peer, checker, generator = setup
    now = 1000.0
    first = generator.add_macs(initiation_bytes(peer), now)
    assert checker.check_mac1(first)
    assert not checker.check_mac2(first, SRC, now)

    reply = checker.create_reply(first, SRC, now, nonce=b"\x09" * 24)
    parsed = parse_cookie_reply(reply)
    assert parsed.receiver == 0xAABBCCDD  # addressed to msg.sender of the message it answers
    # The cookie is MAC(Rm, source) sealed to the responder's cookie key, bound to our mac1.
    cookie = xaead_decrypt(cookie_key(responder.spub), parsed.nonce, parsed.cookie, first[116:132])
    assert len(cookie) == 16

    generator.consume_reply(parsed, now + 0.1)
    assert generator.has_cookie(now + 0.1)
    second = generator.add_macs(initiation_bytes(peer, wall=2.0), now + 1)
    # mac2 covers everything before it, mac1 included.
    assert second[132:] == mac(cookie, second[:132])
    assert checker.check_mac1(second)
    assert checker.check_mac2(second, SRC, now + 1)
    assert not checker.check_mac2(second, OTHER_SRC, now + 1)
    flipped = second[:140] + bytes([second[140] ^ 1]) + second[141:]
    assert not checker.check_mac2(flipped, SRC, now + 1)


def test_cookie_reply_must_answer_our_last_message(setup):
    responder, peer, checker, generator = setup
    someone_elses = CookieGenerator(responder.spub).add_macs(initiation_bytes(peer), 0.0)
    unsolicited = parse_cookie_reply(checker.create_reply(someone_elses, SRC, 0.0))
    with pytest.raises(CookieError):  # we have sent nothing yet
        generator.consume_reply(unsolicited, 0.0)
    old = generator.add_macs(initiation_bytes(peer, 1.0), 0.0)
    stale_reply = parse_cookie_reply(checker.create_reply(old, SRC, 0.0))
    generator.add_macs(initiation_bytes(peer, 2.0), 0.0)  # a newer message replaces mac1
    with pytest.raises(CookieError):
        generator.consume_reply(stale_reply, 0.0)
    fresh = generator.add_macs(initiation_bytes(peer, 3.0), 0.0)
    reply = bytearray(checker.create_reply(fresh, SRC, 0.0))
    reply[40] ^= 1
    with pytest.raises(CookieError):
        generator.consume_reply(parse_cookie_reply(bytes(reply)), 0.0)
    other = CookieGenerator(peer.local.spub)  # a generator for a different responder key
    other.add_macs(fresh, 0.0)
    with pytest.raises(CookieError):
        other.consume_reply(parse_cookie_reply(checker.create_reply(fresh, SRC, 0.0)), 0.0)


def test_generator_cookie_expires(setup):
    _, peer, checker, generator = setup
    msg = generator.add_macs(initiation_bytes(peer), 0.0)
    generator.consume_reply(parse_cookie_reply(checker.create_reply(msg, SRC, 0.0)), 10.0)
    assert generator.add_macs(msg, 10.0 + COOKIE_REFRESH_TIME)[132:] != bytes(16)
    assert not generator.has_cookie(10.0 + COOKIE_REFRESH_TIME + 0.001)
    assert generator.add_macs(msg, 10.0 + COOKIE_REFRESH_TIME + 0.001)[132:] == bytes(16)


def test_checker_secret_rotates(setup):
    _, peer, checker, generator = setup
    msg = generator.add_macs(initiation_bytes(peer), 0.0)
    generator.consume_reply(parse_cookie_reply(checker.create_reply(msg, SRC, 0.0)), 0.0)
    with_cookie = generator.add_macs(msg, 1.0)
    assert checker.check_mac2(with_cookie, SRC, COOKIE_REFRESH_TIME)
    # Past the refresh time the secret is stale: no mac2 verifies until a new reply is minted,
    # and then the old cookie belongs to the old secret.
    assert not checker.check_mac2(with_cookie, SRC, COOKIE_REFRESH_TIME + 1)
    checker.create_reply(with_cookie, SRC, COOKIE_REFRESH_TIME + 1)
    assert not checker.check_mac2(with_cookie, SRC, COOKIE_REFRESH_TIME + 2)


def test_response_macs(setup):
    responder, peer, _, _ = setup
    back = CookieGenerator(peer.local.spub)
    wire = back.add_macs(Response(1, 2, bytes(32), bytes(16)).pack(), 0.0)
    assert wire[60:76] == mac(mac1_key(peer.local.spub), wire[:60])
    assert CookieChecker(peer.local.spub).check_mac1(wire)


def test_address_bytes():
    assert address_bytes("10.0.0.1", 0x1234) == bytes([10, 0, 0, 1, 0x12, 0x34])
    assert len(address_bytes("2001:db8::1", 1)) == 18
