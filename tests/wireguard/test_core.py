"""Device core: handshakes, the data path, cryptokey routing, roaming and configuration."""

from __future__ import annotations

import os
import struct

import pytest

from tether import keys
from tether.wireguard.constants import (
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT,
)
from tether.wireguard.core import UNCHANGED, WireGuardCore

from .support import (
    A_ADDR,
    A_IP,
    B_ADDR,
    B_IP,
    WALL_OFFSET,
    Pair,
    RecordingCore,
    drops,
    ip4,
    ip6,
    is_transport,
    mtype,
    payloads,
)


def test_first_packet_triggers_handshake_and_is_delivered_both_ways():
    p = Pair()
    assert p.a.send_packet(ip4(A_IP, B_IP, b"one"), 0.0, WALL_OFFSET)
    assert [mtype(d) for d, _ in p.a.outgoing] == [MESSAGE_INITIATION]
    p.pump()
    assert payloads(p.b.delivered) == [b"one"]
    assert p.b.delivered[0][0] == p.a.public_key
    p.b_sends(b"two")
    assert payloads(p.a.delivered) == [b"two"]
    for core in (p.a, p.b):
        assert core.counters()["handshakes_completed"] == 1
        assert not drops(core)
    assert p.a.counters()["initiations_sent"] == 1 and p.b.counters()["initiations_received"] == 1
    assert p.ab.last_handshake_wall == p.ba.last_handshake_wall == WALL_OFFSET
    assert p.ba.endpoint == A_ADDR  # learnt from the authenticated initiation


def test_initiator_confirms_with_keepalive_when_nothing_is_queued():
    p = Pair()
    p.a.add_or_update_peer(p.b.public_key, now=0.0, persistent_keepalive=25)
    assert p.a.next_timer() == 0.0  # switching keepalive on sends one at once
    p.a.handle_timer(0.0, WALL_OFFSET)
    p.pump()
    # Initiation, then the keepalive that confirms the session for B.
    kinds = [(mtype(d), len(d)) for _, src, d in p.log if src == A_ADDR]
    assert kinds == [(MESSAGE_INITIATION, 148), (4, MESSAGE_TRANSPORT_MIN_SIZE)]
    assert p.ba.current is not None and p.ba.next is None
    assert p.b.counters()["keepalives_received"] == 1 and not p.b.delivered
    assert p.ba.last_handshake_wall == WALL_OFFSET


def test_responder_sends_nothing_before_key_confirmation():
    p = Pair()
    p.drop_if = lambda src, d: src == A_ADDR and is_transport(d)
    p.a_sends(b"lost")
    assert p.ba.next is not None and p.ba.current is None
    # B has keys but no confirmation: its packet waits, and no initiation goes out either
    # (B sent a response less than REKEY_TIMEOUT ago).
    p.b.send_packet(ip4(B_IP, A_IP, b"waits"), p.now, p.wall)
    assert p.b.outgoing == []
    p.drop_if = lambda src, d: False
    p.now = 1.0
    p.a_sends(b"confirms")
    assert payloads(p.b.delivered) == [b"confirms"]
    assert payloads(p.a.delivered) == [b"waits"]
    assert p.ba.current is not None and p.ba.next is None


def test_replayed_transport_is_delivered_once():
    p = Pair()
    p.established()
    p.a.send_packet(ip4(A_IP, B_IP, b"once"), p.now, p.wall)
    ((datagram, _),) = p.a.outgoing
    p.pump()
    for _ in range(3):
        p.b.receive_datagram(datagram, A_ADDR, p.now, p.wall)
    assert payloads(p.b.delivered) == [b"once"]
    assert p.b.counters()["drop_replay"] == 3


def test_replayed_initiation_is_refused():
    p = Pair()
    p.a.send_packet(ip4(A_IP, B_IP), 0.0, WALL_OFFSET)
    ((initiation, _),) = p.a.outgoing
    p.pump()
    responses = p.b.counters()["responses_sent"]
    p.now = 30.0
    p.b.receive_datagram(initiation, ("203.0.113.9", 9), p.now, p.wall)
    assert p.b.counters()["responses_sent"] == responses
    assert p.b.counters()["drop_initiation_replay_or_flood"] == 1
    assert p.ba.endpoint == A_ADDR


def test_spoofed_inner_source_is_dropped():
    p = Pair()
    p.established()
    # B's core routes by destination only, so it will encrypt a packet with any source.
    p.b.send_packet(ip4(bytes([10, 0, 0, 99]), A_IP, b"spoof"), p.now, p.wall)
    p.b.send_packet(ip4(B_IP, A_IP, b"fine"), p.now, p.wall)
    p.pump()
    assert payloads(p.a.delivered) == [b"fine"]
    assert p.a.counters()["drop_source_not_allowed"] == 1


def test_source_owned_by_another_peer_is_dropped():
    p = Pair()
    third = keys.public_from_private(keys.generate_private())
    p.a.add_or_update_peer(third, now=0.0, allowed_ips=["10.0.0.3/32"])
    p.established()
    p.b.send_packet(ip4(bytes([10, 0, 0, 3]), A_IP, b"not yours"), p.now, p.wall)
    p.pump()
    assert p.a.delivered == []
    assert p.a.counters()["drop_source_not_allowed"] == 1


def test_ipv6_packets_and_bad_inner_packets():
    p = Pair()
    p.established()
    a6, b6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
    assert p.a.send_packet(ip6(a6, b6, b"six"), p.now, p.wall)
    p.pump()
    assert p.b.delivered[0][1] == ip6(a6, b6, b"six")
    # Inner garbage from an authenticated peer: counted, not delivered.
    session = p.ba.current
    for bad in (b"\x45" + bytes(10), b"\x60" + bytes(20), b"\x15" + bytes(40)):
        p.b.receive_datagram(p.ab.current.seal(bad, 1420), A_ADDR, p.now, p.wall)
    assert len(p.b.delivered) == 1 and p.b.counters()["drop_bad_ip"] == 3
    assert session is p.ba.current


def test_padding_to_16_within_mtu_and_trimmed_on_delivery():
    p = Pair()
    p.established()
    for size, wire in ((21, 32 + 32), (1419, 32 + 1420), (1420, 32 + 1420), (1505, 32 + 1516)):
        packet = ip4(A_IP, B_IP, bytes(size - 20))
        p.a.send_packet(packet, p.now, p.wall)
        ((datagram, _),) = p.a.outgoing
        assert len(datagram) == wire
        p.pump()
        assert p.b.delivered.pop()[1] == packet


def test_routing_failures_are_counted():
    p = Pair()
    assert not p.a.send_packet(ip4(A_IP, bytes([192, 0, 2, 1])), 0.0, WALL_OFFSET)
    assert not p.a.send_packet(b"", 0.0, WALL_OFFSET)
    assert not p.a.send_packet(b"\x45" + bytes(5), 0.0, WALL_OFFSET)
    assert drops(p.a) == {"no_route": 1, "bad_ip": 2}
    assert p.a.outgoing == []


def test_roaming_only_after_authentication():
    p = Pair()
    p.established()
    new = ("203.0.113.50", 40000)
    # Garbage, a forged transport message for a live index, and a replay, all from `new`.
    p.b.receive_datagram(os.urandom(100), new, p.now, p.wall)
    p.a.send_packet(ip4(A_IP, B_IP, b"z"), p.now, p.wall)
    ((good, _),) = p.a.outgoing
    p.a.outgoing.clear()
    forged = bytearray(good)
    forged[-1] ^= 1
    p.b.receive_datagram(bytes(forged), new, p.now, p.wall)
    p.b.receive_datagram(good, A_ADDR, p.now, p.wall)
    p.b.receive_datagram(good, new, p.now, p.wall)
    assert p.ba.endpoint == A_ADDR
    assert p.b.counters()["drop_decrypt"] == 1 and p.b.counters()["drop_replay"] == 1
    # An authentic packet from the new address moves the endpoint; replies follow it.
    p.a.send_packet(ip4(A_IP, B_IP, b"moved"), p.now, p.wall)
    ((moved, _),) = p.a.outgoing
    p.a.outgoing.clear()
    p.b.receive_datagram(moved, new, p.now, p.wall)
    assert p.ba.endpoint == new
    p.b.send_packet(ip4(B_IP, A_IP), p.now, p.wall)
    assert p.b.outgoing[-1][1] == new


def test_staged_queue_is_bounded_dropping_oldest():
    p = Pair(max_staged=8)
    p.drop_if = lambda src, d: True
    for i in range(12):
        p.a_sends(b"%d" % i)
    assert len(p.ab.staged) == 8 and p.a.counters()["drop_queue_full"] == 4
    assert p.a.counters()["initiations_sent"] == 1  # one initiation per REKEY_TIMEOUT at most
    p.drop_if = lambda src, d: False
    p.advance(REKEY_TIMEOUT + 0.5)  # the retransmission gets through
    assert payloads(p.b.delivered) == [b"%d" % i for i in range(4, 12)]


def test_simultaneous_initiations_complete_without_waiting():
    p = Pair(b_knows_a=True)
    p.a.send_packet(ip4(A_IP, B_IP, b"from a"), 0.0, WALL_OFFSET)
    p.b.send_packet(ip4(B_IP, A_IP, b"from b"), 0.0, WALL_OFFSET)
    p.pump()
    assert payloads(p.b.delivered) == [b"from a"]
    assert payloads(p.a.delivered) == [b"from b"]
    assert p.now == 0.0


def test_remove_peer_forgets_sessions_routes_and_timers():
    p = Pair()
    p.established()
    p.a.send_packet(ip4(A_IP, B_IP), p.now, p.wall)
    ((late, _),) = p.a.outgoing
    p.a.outgoing.clear()
    assert p.b.remove_peer(p.a.public_key, p.now)
    assert not p.b.remove_peer(p.a.public_key, p.now)
    assert p.b.peer_stats() == () and len(p.b._index) == 0 and p.b.route(A_IP) is None
    assert p.b.next_timer() is None
    p.b.receive_datagram(late, A_ADDR, p.now, p.wall)
    assert p.b.counters()["drop_unknown_index"] == 1 and p.b.delivered == []
    assert not p.b.send_packet(ip4(B_IP, A_IP), p.now, p.wall)


def test_updating_a_peer_keeps_its_and_other_sessions():
    p = Pair()
    other = keys.public_from_private(keys.generate_private())
    p.a.add_or_update_peer(other, now=0.0, allowed_ips=["10.9.0.0/16"])
    p.established()
    session = p.ab.current
    p.a.add_or_update_peer(
        p.b.public_key,
        now=p.now,
        endpoint=("198.51.100.2", 51821),
        persistent_keepalive=0,
        allowed_ips=["10.0.2.0/24"],
    )
    p.a.add_or_update_peer(other, now=p.now, replace_allowed_ips=True, allowed_ips=["10.8.0.0/16"])
    assert p.ab.current is session
    assert [str(n) for n in p.ab.allowed_ips] == ["10.0.0.2/32", "fd00::2/128", "10.0.2.0/24"]
    p.a.add_or_update_peer(p.b.public_key, now=p.now, remove_allowed_ips=["fd00::2/128"])
    assert [str(n) for n in p.ab.allowed_ips] == ["10.0.0.2/32", "10.0.2.0/24"]
    # Removing a prefix the peer does not own leaves the owner alone.
    p.a.add_or_update_peer(p.b.public_key, now=p.now, remove_allowed_ips=["10.8.0.0/16"])
    (status,) = (s for s in p.a.peer_stats() if s.public_key == other)
    assert [str(n) for n in status.allowed_ips] == ["10.8.0.0/16"]
    p.a_sends(b"still")
    assert payloads(p.b.delivered) == [b"still"]
    assert p.a.counters()["initiations_sent"] == 1


def test_peer_option_validation_and_own_key():
    core = WireGuardCore(keys.generate_private())
    pub = keys.public_from_private(keys.generate_private())
    with pytest.raises(ValueError):
        core.add_or_update_peer(core.public_key, now=0.0)
    with pytest.raises(ValueError):
        core.add_or_update_peer(pub, now=0.0, preshared_key=b"short")
    with pytest.raises(ValueError):
        core.add_or_update_peer(pub, now=0.0, persistent_keepalive=70000)
    assert core.peer_stats() == ()
    peer = core.add_or_update_peer(pub, now=0.0, preshared_key=bytes(32), persistent_keepalive=None)
    assert peer.preshared_key is None and peer.persistent_keepalive == 0
    assert peer.protocol_version == 1 and peer.endpoint is None and peer.allowed_ips == []
    assert core.add_or_update_peer(pub, now=0.0, endpoint=UNCHANGED) is peer


def test_preshared_key_must_match():
    p = Pair()
    psk = os.urandom(32)
    p.a.add_or_update_peer(p.b.public_key, now=0.0, preshared_key=psk)
    p.a_sends()
    assert p.ab.current is None and p.a.counters()["drop_handshake_invalid"] == 1
    p.b.add_or_update_peer(p.a.public_key, now=0.0, preshared_key=psk)
    p.advance(REKEY_TIMEOUT + 1)
    assert payloads(p.b.delivered) == [b"x"]


def test_changing_private_key_drops_sessions_and_own_peer():
    p = Pair()
    p.established()
    new_key = keys.generate_private()
    new_pub = keys.public_from_private(new_key)
    p.a.add_or_update_peer(new_pub, now=p.now)
    p.a.set_private_key(p.a_key, p.now)  # unchanged: a no-op
    assert p.ab.current is not None
    p.a.set_private_key(new_key, p.now)
    assert not p.a.has_peer(new_pub)
    assert p.ab.current is None and len(p.a._index) == 0
    # B must learn the new key; then traffic flows with a fresh handshake.
    p.b.remove_peer(keys.public_from_private(p.a_key), p.now)
    p.b.add_or_update_peer(new_pub, now=p.now, allowed_ips=["10.0.0.1/32"])
    p.a_sends(b"rekeyed")
    assert payloads(p.b.delivered) == [b"rekeyed"]
    p.a.set_private_key(None, p.now)
    assert p.a.public_key is None and p.ab.keys is None
    p.b.remove_peer(new_pub, p.now)
    p.b.add_or_update_peer(new_pub, now=p.now, endpoint=A_ADDR, allowed_ips=["10.0.0.1/32"])
    p.b.send_packet(ip4(B_IP, A_IP), p.now, p.wall)
    ((initiation, _),) = p.b.outgoing
    p.a.receive_datagram(initiation, B_ADDR, p.now, p.wall)
    assert p.a.counters()["drop_no_private_key"] == 1 and p.a.outgoing == []


def test_unknown_initiator_and_garbage_are_counted_drops():
    p = Pair()
    stranger = RecordingCore(keys.generate_private())
    stranger.add_or_update_peer(p.b.public_key, now=0.0, endpoint=B_ADDR, allowed_ips=["0.0.0.0/0"])
    stranger.send_packet(ip4(A_IP, B_IP), 0.0, WALL_OFFSET)
    ((initiation, _),) = stranger.outgoing
    p.b.receive_datagram(initiation, ("203.0.113.1", 1), 0.0, WALL_OFFSET)
    bad_mac = bytearray(initiation)
    bad_mac[-20] ^= 1
    p.b.receive_datagram(bytes(bad_mac), ("203.0.113.1", 1), 0.0, WALL_OFFSET)
    for junk in (b"", b"\x01", b"\x05\x00\x00\x00" + bytes(40), bytes(148)):
        p.b.receive_datagram(junk, ("203.0.113.1", 1), 0.0, WALL_OFFSET)
    stray = struct.pack("<IIII", MESSAGE_RESPONSE, 1, 2, 3) + bytes(76)
    p.b.receive_datagram(stray, ("203.0.113.1", 1), 0.0, WALL_OFFSET)
    dropped = drops(p.b)
    assert dropped == {"unknown_peer": 1, "mac1": 2, "malformed": 4}
    assert p.b.outgoing == [] and p.b.delivered == []


def test_reject_after_messages_forces_a_new_session():
    p = Pair()
    p.established()
    old = p.ab.current
    old.send_counter = REJECT_AFTER_MESSAGES - 1
    p.a_sends(b"last")  # the last counter value that may be used
    assert payloads(p.b.delivered) == [b"last"]
    assert old.send_counter == REJECT_AFTER_MESSAGES
    p.now += REKEY_TIMEOUT  # so the rekey initiation is not rate limited
    p.a_sends(b"next")
    assert p.ab.current is not old
    assert payloads(p.b.delivered) == [b"last", b"next"]


def test_routes_lost_names_every_peer_that_lost_addresses():
    """The shell ends exit flows of these peers (tests/device/test_device_forget.py)."""
    core = WireGuardCore(keys.decode(keys.genkey()))
    a, b = (keys.public_from_private(keys.generate_private()) for _ in range(2))
    core.add_or_update_peer(a, now=0.0, allowed_ips=["10.0.0.0/24", "10.1.0.2/32"])
    core.add_or_update_peer(b, now=0.0, allowed_ips=["10.2.0.2/32"])
    assert core.take_routes_lost() == set()
    core.add_or_update_peer(a, now=0.0, allowed_ips=["10.1.0.3/32"])  # an addition loses nothing
    core.add_or_update_peer(b, now=0.0, allowed_ips=["10.0.0.7/32"])  # inside a's /24
    assert core.take_routes_lost() == {a}
    assert core.route(bytes([10, 0, 0, 7])) == b and core.route(bytes([10, 0, 0, 8])) == a
    assert core.route(bytes([10, 9, 0, 1])) is None
    core.add_or_update_peer(b, now=0.0, allowed_ips=["10.0.0.0/16"])  # covers a's: a keeps them
    assert core.take_routes_lost() == set()
    core.add_or_update_peer(
        a, now=0.0, allowed_ips=["10.0.0.0/24", "10.1.0.2/32", "10.1.0.3/32"],
        replace_allowed_ips=True,
    )  # fmt: skip
    assert core.take_routes_lost() == set()  # the same set again
    core.add_or_update_peer(a, now=0.0, remove_allowed_ips=["10.1.0.3/32"])
    assert core.take_routes_lost() == {a}
    core.remove_peer(b, 0.0)
    assert core.take_routes_lost() == {b}
