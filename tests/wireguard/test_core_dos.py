"""Handshake DoS defences, sans-IO: under-load detection, cookie replies, per-source limits."""

from __future__ import annotations

import os
import random
import struct

from tether.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    UNDER_LOAD_AFTER_TIME,
)
from tether.wireguard.cookie import CookieGenerator
from tether.wireguard.ratelimit import HandshakeRateLimiter, LoadMonitor

from .support import A_ADDR, A_IP, B_ADDR, B_IP, WALL_OFFSET, Pair, ip4, mtype, payloads


def spoofed_initiations(responder_public: bytes, count: int, seed: int = 0):
    """(datagram, source) pairs: random initiations with a valid mac1, from random addresses.

    Anyone who knows the responder's public key can compute mac1, so these pass the first check
    and would each cost a Diffie-Hellman if the responder did not demand cookies.
    """
    rng = random.Random(seed)
    macs = CookieGenerator(responder_public)
    for _ in range(count):
        body = struct.pack("<II", MESSAGE_INITIATION, rng.getrandbits(32)) + rng.randbytes(
            MESSAGE_INITIATION_SIZE - 8
        )
        source = (f"192.0.2.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))
        yield macs.add_macs(body, 0.0), source


def test_flood_gets_cookies_and_the_legitimate_peer_still_completes():
    p = Pair(under_load_rate=20)
    b = p.b
    sources = []
    for datagram, source in spoofed_initiations(b.public_key, 200):
        b.receive_datagram(datagram, source, 0.0, WALL_OFFSET)
        sources.append(source)
    # The first 20 within a second were processed (and failed, costing a DH each); from then on
    # the device is under load and answers with cookies, doing no DH at all.
    assert b.counters()["drop_handshake_invalid"] == 20
    assert b.counters()["cookie_replies_sent"] == 180
    assert all(mtype(d) == MESSAGE_COOKIE_REPLY and len(d) == 64 for d, _ in b.outgoing)
    assert [dst for _, dst in b.outgoing] == sources[20:]
    b.outgoing.clear()

    # The legitimate peer: initiation -> cookie reply -> the same initiation with mac2 ->
    # response -> keepalive, all at the same instant, while still under load.
    p.now = 0.5
    p.a.send_packet(ip4(A_IP, B_IP, b"made it"), p.now, p.wall)
    p.pump()
    a_sent = [mtype(d) for _, src, d in p.log if src == A_ADDR]
    b_sent = [mtype(d) for _, src, d in p.log if src == B_ADDR]
    assert a_sent == [MESSAGE_INITIATION, MESSAGE_INITIATION, 4]
    assert b_sent == [MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE]
    assert payloads(b.delivered) == [b"made it"]
    assert p.a.counters()["cookie_replies_received"] == 1
    assert b.counters()["handshakes_completed"] == 1


def test_load_ends_after_under_load_after_time():
    p = Pair(under_load_rate=20)
    for datagram, source in spoofed_initiations(p.b.public_key, 21):
        p.b.receive_datagram(datagram, source, 0.0, WALL_OFFSET)
    assert p.b.counters()["cookie_replies_sent"] == 1
    p.b.outgoing.clear()
    p.now = UNDER_LOAD_AFTER_TIME + 0.001
    p.a_sends(b"calm")
    assert [mtype(d) for _, src, d in p.log if src == B_ADDR] == [MESSAGE_RESPONSE]
    assert payloads(p.b.delivered) == [b"calm"]


def test_forged_cookie_reply_is_ignored():
    p = Pair()
    p.drop_if = lambda src, d: True
    p.a_sends()
    index = p.ab.pending.local_index
    forged = struct.pack("<II", MESSAGE_COOKIE_REPLY, index) + os.urandom(56)
    p.a.receive_datagram(forged, B_ADDR, p.now, p.wall)
    p.a.receive_datagram(struct.pack("<II", MESSAGE_COOKIE_REPLY, index ^ 1) + bytes(56), B_ADDR,
                         p.now, p.wall)  # fmt: skip
    assert p.a.counters()["drop_cookie_invalid"] == 1 and p.a.counters()["drop_unknown_index"] == 1
    assert p.a.outgoing == []


def test_cookie_resend_happens_once_per_initiation():
    p = Pair(under_load_rate=1)
    p.b.receive_datagram(*next(spoofed_initiations(p.b.public_key, 1)), 0.0, WALL_OFFSET)
    # Keep B's answers away from A except the cookie replies, which A answers at most once.
    p.drop_if = lambda src, d: src == B_ADDR and mtype(d) != MESSAGE_COOKIE_REPLY
    p.a_sends()
    a_sent = [mtype(d) for _, src, d in p.log if src == A_ADDR]
    assert a_sent == [MESSAGE_INITIATION, MESSAGE_INITIATION]


def test_load_monitor_counts_a_sliding_second():
    monitor = LoadMonitor(rate=8)
    # Eight per second, evenly spread, is not over the rate.
    assert not any(monitor.record(i * 0.125) for i in range(40))
    assert monitor.record(4.9)  # a ninth within a second
    assert monitor.under_load(4.9 + UNDER_LOAD_AFTER_TIME - 0.001)
    assert not monitor.under_load(4.9 + UNDER_LOAD_AFTER_TIME)


def test_rate_limiter_token_bucket_per_source():
    limiter = HandshakeRateLimiter()
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("192.0.2.2", 0.0)  # another source has its own bucket
    assert not limiter.allow("192.0.2.1", 0.04)
    assert limiter.allow("192.0.2.1", 0.06)  # one token per 50 ms
    # IPv6 sources share a bucket per /64.
    assert all(limiter.allow(f"2001:db8::{i}", 1.0) for i in range(5))
    assert not limiter.allow("2001:db8::99", 1.0)
    assert limiter.allow("2001:db8:0:1::1", 1.0)
    # Idle entries are garbage-collected.
    limiter.allow("192.0.2.9", 10.0)
    assert len(limiter) == 1
