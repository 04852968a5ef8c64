"""Device core timers (paper §6) on a fake clock: rekey, reject, keepalives, retries, zeroing."""

from __future__ import annotations

import pytest

from tether.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_INITIATION,
    MESSAGE_TRANSPORT_MIN_SIZE,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

from .support import A_ADDR, A_IP, B_ADDR, B_IP, Pair, ip4, is_transport, mtype, payloads


def sent_by(p: Pair, addr: tuple, since: float = -1.0) -> list[tuple[float, int, int]]:
    """(time, type, length) of each datagram `addr` put on the wire since `since`."""
    return [(t, mtype(d), len(d)) for t, src, d in p.log if src == addr and t >= since]


def initiations(p: Pair, addr: tuple) -> list[float]:
    return [t for t, kind, _ in sent_by(p, addr) if kind == MESSAGE_INITIATION]


def test_initiator_rekeys_after_120_seconds_of_use():
    p = Pair()
    p.established()
    first = p.ab.current
    p.now = REKEY_AFTER_TIME - 0.5
    p.a_sends(b"old")
    assert p.ab.current is first and len(initiations(p, A_ADDR)) == 1
    p.now = REKEY_AFTER_TIME + 0.5
    p.a.send_packet(ip4(A_IP, B_IP, b"trigger"), p.now, p.wall)
    # The packet still goes out with the old session, followed by the initiation.
    assert [mtype(d) for d, _ in p.a.outgoing] == [4, MESSAGE_INITIATION]
    p.pump()
    assert p.ab.current is not first and p.ab.previous is first
    assert p.ba.current is p.b._index.entries[p.ab.current.remote_index]
    assert payloads(p.b.delivered) == [b"old", b"trigger"]


def test_responder_does_not_rekey_by_time_on_send():
    p = Pair()
    p.established()
    p.now = REKEY_AFTER_TIME + 10
    p.b_sends(b"responder")
    assert payloads(p.a.delivered) == [b"responder"]
    assert initiations(p, B_ADDR) == []


def test_initiator_rekeys_on_receive_after_165_seconds():
    p = Pair()
    p.established()
    first = p.ab.current
    limit = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    p.now = limit - 1
    p.b_sends()
    assert len(initiations(p, A_ADDR)) == 1
    p.now = limit + 1
    p.b_sends()
    assert len(initiations(p, A_ADDR)) == 2 and p.ab.current is not first
    # Only once per session: the "last minute" handshake is not repeated per packet.
    p.now = limit + 2
    p.b.send_packet(ip4(B_IP, A_IP), p.now, p.wall)
    p.pump()
    assert len(initiations(p, A_ADDR)) == 2


def test_sessions_are_rejected_after_180_seconds():
    p = Pair()
    p.established()
    old = p.ab.current
    # A datagram sealed just before the limit arrives just after it.
    p.now = REJECT_AFTER_TIME - 0.1
    p.b.send_packet(ip4(B_IP, A_IP, b"late"), p.now, p.wall)
    late = p.b.outgoing.pop()[0]
    p.a.receive_datagram(late, B_ADDR, REJECT_AFTER_TIME + 0.1, p.wall)
    assert p.a.delivered == [] and p.a.counters()["drop_session_expired"] == 1
    # Sending after the limit never uses the old session: the packet waits for a handshake.
    p.now = REJECT_AFTER_TIME
    p.drop_if = lambda src, d: True
    p.b.send_packet(ip4(B_IP, A_IP, b"new"), p.now, p.wall)
    assert [mtype(d) for d, _ in p.b.outgoing] == [MESSAGE_INITIATION]
    p.drop_if = lambda src, d: False
    p.pump()
    assert payloads(p.a.delivered) == [b"new"] and p.ab.current is not old


def test_rekey_after_messages():
    p = Pair()
    p.established()
    p.ab.current.send_counter = REKEY_AFTER_MESSAGES + 1
    first = p.ab.current
    p.now = REKEY_TIMEOUT  # not rate limited by the first handshake
    p.a_sends()
    assert p.ab.current is not first


def test_passive_keepalive_after_10_seconds():
    p = Pair()
    p.established()
    p.now = 1.0
    p.a_sends(b"data")
    p.advance(1.0 + KEEPALIVE_TIMEOUT - 0.01)
    assert sent_by(p, B_ADDR, since=1.0) == []
    p.advance(1.0 + KEEPALIVE_TIMEOUT)
    assert sent_by(p, B_ADDR, since=1.0) == [(11.0, 4, MESSAGE_TRANSPORT_MIN_SIZE)]


def test_no_keepalive_when_data_went_back():
    p = Pair()
    p.established()
    p.now = 1.0
    p.a_sends(b"data")
    p.now = 5.0
    p.b_sends(b"reply")
    p.advance(30.0)
    assert [kind for _, kind, _ in sent_by(p, B_ADDR, since=1.0)] == [4]
    # A got data at 5 s and sends a keepalive at 15 s.
    assert sent_by(p, A_ADDR, since=5.5) == [(15.0, 4, MESSAGE_TRANSPORT_MIN_SIZE)]


def test_new_handshake_when_the_peer_goes_silent():
    p = Pair()
    p.established()
    p.drop_if = lambda src, d: src == B_ADDR  # B's replies and keepalives are lost
    p.now = 2.0
    p.a_sends(b"anyone?")
    p.advance(2.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01)
    assert len(initiations(p, A_ADDR)) == 1
    p.advance(2.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    times = initiations(p, A_ADDR)
    assert len(times) == 2
    assert 17.0 <= times[1] < 17.0 + REKEY_TIMEOUT_JITTER_MAX


def test_handshake_retransmits_with_jitter_and_gives_up():
    p = Pair()
    p.drop_if = lambda src, d: True
    p.a_sends(b"doomed")
    p.advance(200.0)
    times = initiations(p, A_ADDR)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == MAX_TIMER_HANDSHAKES + 2  # the first and 19 retries, as wireguard-go
    assert all(REKEY_TIMEOUT <= gap < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for gap in gaps)
    assert len(set(gaps)) > 1  # jittered
    assert p.a.counters()["drop_handshake_gave_up"] == 1 and not p.ab.staged
    gave_up = times[-1] + min(gaps)
    assert gave_up >= 90.0  # REKEY_ATTEMPT_TIME
    assert p.ab.retransmit_handshake_at is None
    # What is left of the attempt is erased REJECT_AFTER_TIME * 3 later.
    assert p.ab.zero_key_material_at == pytest.approx(
        gave_up + 3 * REJECT_AFTER_TIME, abs=REKEY_TIMEOUT_JITTER_MAX + 5
    )
    p.advance(p.ab.zero_key_material_at)
    assert p.ab.pending is None and len(p.a._index) == 0
    assert p.a.next_timer() is None


def test_keys_are_zeroed_after_540_seconds_without_a_handshake():
    p = Pair()
    p.established()
    assert p.a.next_timer() == p.b.next_timer() == 3 * REJECT_AFTER_TIME
    p.advance(3 * REJECT_AFTER_TIME - 0.01)
    assert p.ab.current is not None and p.ba.current is not None
    p.advance(3 * REJECT_AFTER_TIME)
    for peer, core in ((p.ab, p.a), (p.ba, p.b)):
        assert peer.current is peer.previous is peer.next is peer.pending is None
        assert len(core._index) == 0 and core.next_timer() is None
    # A new packet simply starts over.
    p.a_sends(b"again")
    assert payloads(p.b.delivered) == [b"again"]


def test_persistent_keepalive():
    p = Pair()
    p.established()
    p.a.add_or_update_peer(p.b.public_key, now=p.now, persistent_keepalive=25)
    p.advance(0.0)
    assert sent_by(p, A_ADDR, since=0.0)[-1] == (0.0, 4, MESSAGE_TRANSPORT_MIN_SIZE)
    p.advance(60.0)
    keepalives = [t for t, kind, size in sent_by(p, A_ADDR, since=0.001) if size == 32]
    assert keepalives == [25.0, 50.0]
    # Traffic in either direction postpones it; switching it off cancels it.
    p.now = 60.0
    p.b_sends()
    assert p.ab.persistent_keepalive_at == 85.0
    p.a.add_or_update_peer(p.b.public_key, now=p.now, persistent_keepalive=0)
    assert p.ab.persistent_keepalive_at is None


def test_next_timer_is_exact_and_early_calls_do_nothing():
    p = Pair()
    p.drop_if = lambda src, d: True
    p.a.send_packet(ip4(A_IP, B_IP), 0.0, p.wall)
    p.take()
    deadline = p.a.next_timer()
    assert deadline == p.ab.retransmit_handshake_at
    assert REKEY_TIMEOUT <= deadline < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    p.a.handle_timer(deadline - 1e-6, p.wall)
    assert p.a.outgoing == [] and p.a.next_timer() == deadline
    p.a.handle_timer(deadline, p.wall)
    assert [mtype(d) for d, _ in p.a.outgoing] == [MESSAGE_INITIATION]
    assert p.a.next_timer() == p.ab.retransmit_handshake_at > deadline


def test_handshake_initiations_are_rate_limited_per_peer():
    p = Pair()
    p.drop_if = lambda src, d: True
    for i in range(50):
        p.now = i * 0.1
        p.a_sends()
    assert len(initiations(p, A_ADDR)) == 1
    assert all(not is_transport(d) for _, _, d in p.log)


def test_response_to_an_initiation_older_than_the_retry_interval_is_refused():
    p = Pair()
    p.drop_if = lambda src, d: True
    p.a_sends(b"slow")
    p.advance(150.0)  # A retried and gave up; its last initiation is still pending
    assert p.ab.pending is not None and p.ab.retransmit_handshake_at is None
    (initiation,) = [d for t, src, d in p.log if src == A_ADDR][-1:]
    p.b.receive_datagram(initiation, A_ADDR, p.now, p.wall)
    ((response, _),) = p.b.outgoing
    p.a.receive_datagram(response, B_ADDR, p.now, p.wall)
    assert p.a.counters()["drop_stale_response"] == 1 and p.ab.current is None
