"""TimerQueue: lazily repaired heap of per-peer deadlines, checked against a brute-force min."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.wireguard.constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT
from tether.wireguard.timers import (
    RETRANSMIT_HANDSHAKE,
    SEND_KEEPALIVE,
    ZERO_KEY_MATERIAL,
    PeerTimers,
    TimerQueue,
)


class FakePeer(PeerTimers):
    __slots__ = ("persistent_keepalive", "last_handshake_wall", "name")

    def __init__(self, queue: TimerQueue, name: int, keepalive: int = 0) -> None:
        self.persistent_keepalive = keepalive
        self.last_handshake_wall = None
        self.name = name
        self._init_timers(queue)


def make(n: int, jitter: float = 0.0) -> tuple[TimerQueue, list[FakePeer]]:
    queue = TimerQueue(lambda: jitter)
    return queue, [FakePeer(queue, i, keepalive=7 * (i % 2)) for i in range(n)]


def test_hooks_set_and_clear_the_paper_deadlines():
    queue, (peer,) = make(1, jitter=0.25)
    peer.timers_handshake_initiated(1.0)
    assert peer.retransmit_handshake_at == 1.0 + REKEY_TIMEOUT + 0.25
    peer.timers_data_sent(2.0)
    peer.timers_data_sent(3.0)  # already pending: unchanged
    assert peer.new_handshake_at == 2.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.25
    peer.timers_data_received(2.0)
    peer.timers_data_received(4.0)
    assert peer.send_keepalive_at == 12.0 and peer.need_another_keepalive
    peer.timers_session_derived(2.0)
    assert peer.zero_key_material_at == 2.0 + 3 * REJECT_AFTER_TIME
    assert queue.next_timer() == 1.0 + REKEY_TIMEOUT + 0.25
    peer.timers_handshake_complete(99.0)
    assert peer.retransmit_handshake_at is None and peer.last_handshake_wall == 99.0
    assert queue.next_timer() == 12.0
    peer.timers_any_authenticated_packet_sent()
    assert queue.next_timer() == peer.new_handshake_at
    peer.timers_any_authenticated_packet_received()
    assert queue.next_timer() == peer.zero_key_material_at


def test_pop_expired_returns_timers_in_deadline_order():
    queue, (peer,) = make(1)
    peer.timers_session_derived(-3 * REJECT_AFTER_TIME + 1.0)  # due at 1.0
    peer.timers_handshake_initiated(-REKEY_TIMEOUT + 2.0)  # due at 2.0
    peer.timers_data_received(-KEEPALIVE_TIMEOUT + 1.0)  # due at 1.0, ties go by kind
    assert queue.pop_due(1.5) == [peer]
    assert peer.pop_expired(1.5) == SEND_KEEPALIVE
    assert peer.pop_expired(1.5) == ZERO_KEY_MATERIAL
    assert peer.pop_expired(1.5) is None
    queue.reschedule(peer)
    assert queue.next_timer() == 2.0
    assert queue.pop_due(2.0) == [peer] and peer.pop_expired(2.0) == RETRANSMIT_HANDSHAKE
    queue.reschedule(peer)
    assert queue.next_timer() is None and queue.pop_due(1e9) == []


def test_stopped_peers_leave_only_stale_entries():
    queue, peers = make(3)
    for i, peer in enumerate(peers):
        peer.timers_handshake_initiated(float(i))
    peers[0].timers_stop()
    assert queue.next_timer() == 1.0 + REKEY_TIMEOUT
    assert queue.pop_due(100.0) == peers[1:]


_OPS = st.sampled_from(
    [
        "data_sent",
        "data_received",
        "sent",
        "received",
        "initiated",
        "complete",
        "derived",
        "traversal",
        "stop",
        "fire",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(_OPS, st.integers(0, 4), st.floats(0, 30, allow_nan=False)),
        min_size=1,
        max_size=120,
    )
)
def test_next_timer_is_always_the_exact_minimum(ops):
    queue, peers = make(5, jitter=0.125)
    now = 0.0
    for op, which, dt in ops:
        now += dt
        peer = peers[which]
        if op == "fire":
            due = queue.pop_due(now)
            expected = {
                p.name for p in peers if (d := p.earliest_deadline()) is not None and d <= now
            }
            assert {p.name for p in due} == expected
            for p in due:
                while p.pop_expired(now) is not None:
                    pass
                queue.reschedule(p)
        elif op == "data_sent":
            peer.timers_data_sent(now)
        elif op == "data_received":
            peer.timers_data_received(now)
        elif op == "sent":
            peer.timers_any_authenticated_packet_sent()
        elif op == "received":
            peer.timers_any_authenticated_packet_received()
        elif op == "initiated":
            peer.timers_handshake_initiated(now)
        elif op == "complete":
            peer.timers_handshake_complete(now)
        elif op == "derived":
            peer.timers_session_derived(now)
        elif op == "traversal":
            peer.timers_any_authenticated_packet_traversal(now)
        elif op == "stop":
            peer.timers_stop()
        pending = [d for p in peers if (d := p.earliest_deadline()) is not None]
        assert queue.next_timer() == (min(pending) if pending else None)
    assert len(queue) <= 257


def test_heap_stays_bounded_under_churn():
    queue, peers = make(2)
    now = 0.0
    for step in range(20_000):
        now += 0.001
        peer = peers[step % 2]
        # Deadlines that keep moving earlier than the peer's heap entry: a push every time.
        peer.timers_handshake_initiated(now - step * 0.01)
        if step % 3 == 2:
            assert queue.next_timer() == min(p.earliest_deadline() for p in peers)
    assert len(queue) <= 256
