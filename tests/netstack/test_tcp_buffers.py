"""Reassembly queue, SACK scoreboard, send buffer, RTT estimator and congestion control."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from tether.netstack.tcp import (
    Cubic,
    NewReno,
    ReassemblyQueue,
    RttEstimator,
    SackScoreboard,
    SendBuffer,
    make_congestion_control,
)

BASE = 10**9  # absolute sequence numbers need not be small


def stream_byte(i: int) -> int:
    return (i * 7 + i // 251) & 0xFF


def stream(start: int, end: int) -> bytes:
    return bytes(stream_byte(i) for i in range(start, end))


@given(
    inserts=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 400)), max_size=40),
    max_ranges=st.integers(1, 8),
)
def test_reassembly_queue_matches_a_byte_model(inserts, max_ranges) -> None:
    q = ReassemblyQueue(max_ranges)
    held: set[int] = set()
    for off, n in inserts:
        seq = BASE + off
        accepted = q.insert(seq, memoryview(stream(seq, seq + n)))
        if accepted:
            held.update(range(seq, seq + n))
            assert q.sack_blocks(4)[0][0] <= seq < q.sack_blocks(4)[0][1], "newest block first"
        else:
            assert len(q.starts) == max_ranges
        # Disjoint, non-adjacent, sorted ranges whose bytes are right.
        assert len(q.starts) <= max_ranges
        ends = [s + len(c) for s, c in zip(q.starts, q.chunks, strict=True)]
        assert all(e < s for e, s in zip(ends, q.starts[1:], strict=False))
        assert q.nbytes == sum(len(c) for c in q.chunks) == len(held)
        for s, c in zip(q.starts, q.chunks, strict=True):
            assert bytes(c) == stream(s, s + len(c))
        blocks = q.sack_blocks(3)
        assert len(blocks) == min(3, len(q.starts))
        assert len(set(blocks)) == len(blocks)
        assert all(b in list(zip(q.starts, ends, strict=True)) for b in blocks)
    # Deliver from the bottom: everything contiguous with BASE+1 comes out, in order.
    out = b"".join(bytes(c) for c in q.pop_ready(BASE + 1))
    expect = 0
    while BASE + 1 + expect in held:
        expect += 1
    assert out == stream(BASE + 1, BASE + 1 + expect)


def test_reassembly_pop_trims_what_is_already_delivered() -> None:
    q = ReassemblyQueue(8)
    q.insert(100, b"abcdef")
    q.insert(200, b"xyz")
    assert [bytes(c) for c in q.pop_ready(103)] == [b"def"]
    assert q.starts == [200] and q.nbytes == 3
    assert q.pop_ready(150) == []


def test_reassembly_merges_a_segment_spanning_several_ranges() -> None:
    q = ReassemblyQueue(8)
    q.insert(10, b"bb")
    q.insert(20, b"dd")
    q.insert(5, b"a" * 5 + b"XX" + b"c" * 8 + b"YY" + b"e" * 3)
    assert q.starts == [5]
    assert bytes(q.chunks[0]) == b"aaaaa" + b"bb" + b"cccccccc" + b"dd" + b"eee"
    assert q.nbytes == 20


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("sack"),
                st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 400)), max_size=4),
            ),
            st.tuples(st.just("ack"), st.integers(0, 600)),
        ),
        max_size=30,
    ),
    mss=st.integers(1, 300),
)
def test_scoreboard_matches_a_byte_model(ops, mss) -> None:
    sb = SackScoreboard(max_ranges=1000)
    una = BASE
    snd_max = BASE + 3000
    sacked: set[int] = set()
    for op in ops:
        if op[0] == "sack":
            blocks = [(BASE + a, BASE + a + n) for a, n in op[1]]
            new = sb.update(blocks, una, snd_max)
            before = len(sacked)
            for left, right in blocks:
                sacked.update(range(max(left, una), min(right, snd_max)))
            assert new == (len(sacked) > before)
        else:
            una = min(una + op[1], snd_max)
            sb.advance(una)
            sacked = {s for s in sacked if s >= una}
        assert sb.sacked == len(sacked)
        assert all(e < s for e, s in zip(sb.ends, sb.starts[1:], strict=False))
        for a, b in [(una, snd_max), (una + 100, una + 700), (BASE + 2000, BASE + 2500)]:
            assert sb.unsacked_between(a, b) == sum(1 for s in range(a, b) if s not in sacked)
        # RFC 6675 IsLost() by brute force, against the single edge.
        edge = sb.lost_edge(una, mss)
        for s in range(una, snd_max, 97):
            if s in sacked:
                continue
            above = sorted(x for x in sacked if x > s)
            runs = sum(1 for i, x in enumerate(above) if i == 0 or above[i - 1] != x - 1)
            is_lost = runs >= 3 or len(above) > 2 * mss
            assert is_lost == (s < edge), (s, edge)
        hole = sb.next_hole(una, snd_max)
        first_unsacked = next((s for s in range(una, snd_max) if s not in sacked), None)
        if first_unsacked is None:
            assert hole is None
        else:
            assert hole[0] == first_unsacked
            assert all(s not in sacked for s in range(hole[0], hole[1]))
            assert hole[1] == snd_max or hole[1] in sacked


def test_scoreboard_range_cap_forgets_the_highest() -> None:
    sb = SackScoreboard(max_ranges=2)
    sb.update([(10, 20), (30, 40), (50, 60)], 0, 100)
    assert (sb.starts, sb.ends, sb.sacked) == ([10, 30], [20, 40], 20)


def test_send_buffer_is_bounded_and_indexed_by_sequence() -> None:
    buf = SendBuffer(seq=1000, limit=10)
    assert buf.append(b"abcdefgh") == 8
    assert buf.append(memoryview(b"ijklmn")) == 2
    assert buf.space() == 0 and buf.end == 1010
    assert bytes(buf.get(1003, 4)) == b"defg"
    buf.ack_to(1004)
    assert bytes(buf.data) == b"efghij" and buf.seq == 1004
    buf.ack_to(1020)  # an ACK that also covers the FIN
    assert buf.data == b"" and buf.seq == 1010
    assert buf.append(b"") == 0


def test_rtt_estimator_follows_rfc6298() -> None:
    r = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=60.0)
    assert r.rto == 1.0  # (2.1) before any measurement
    r.sample(0.1)
    assert (r.srtt, r.rttvar) == (0.1, 0.05)  # (2.2)
    assert r.rto == pytest.approx(0.1 + 0.2 + 0.001)  # 4 * RTTVAR = 0.2: the floor holds
    r.sample(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)  # (2.3)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert r.rto == pytest.approx(r.srtt + 4 * r.rttvar + 0.001)  # the variance term rules
    r.sample(-1.0)  # ignored
    assert r.latest == 0.3 and r.min_rtt == 0.1
    for _ in range(60):
        r.sample(0.25)
    # Linux's floor is on the variance term: a peer sitting 250 ms on its ACKs every time still
    # has 200 ms of room, where a floor on the whole RTO would leave ~1 ms.
    assert r.rto == pytest.approx(0.25 + 0.2 + 0.001, abs=1e-4)
    r.backoff = 3
    assert r.rto == pytest.approx(8 * (0.451), abs=1e-3)
    r.backoff = 20
    assert r.rto == 60.0
    r.sample(0.25)
    assert r.backoff == 0  # only a measurement clears the backoff (RFC 6298 §5.7)


def test_rtt_estimator_allows_a_delayed_ack_until_data_is_timed() -> None:
    """The handshake's RTT says nothing about how long the peer sits on ACKs of data: until a
    data segment is timed, the floor is RFC 9293's 500 ms limit on delaying an ACK."""
    r = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=60.0)
    r.sample(0.02, data=False)  # the SYN-ACK
    assert r.rto == pytest.approx(0.02 + 0.5 + 0.001)
    r.sample(0.22)  # data, ACKed from a 200 ms delayed-ACK timer
    assert r.data_timed
    assert r.rto == pytest.approx(r.srtt + max(4 * r.rttvar, 0.2) + 0.001)
    assert r.rto > 0.22 + 0.05  # the next such ACK comes in time


def test_rtt_estimator_after_a_spurious_timeout_clears_the_delay_seen() -> None:
    """RFC 4015 §4: SRTT and RTTVAR restart from the delay that fooled the timer."""
    r = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=60.0)
    for _ in range(20):
        r.sample(0.02)
    r.backoff = 1
    r.spurious_timeout(0.5)
    assert (r.srtt, r.rttvar, r.backoff) == (0.5, 0.25, 0)
    assert r.rto == pytest.approx(0.5 + 1.0 + 0.001)
    r.spurious_timeout(-1.0)  # clock misuse: no change
    assert r.srtt == 0.5


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_congestion_state_undo_restores_everything_a_timeout_changed(cls) -> None:
    cc = cls(1000, 10_000)
    for i in range(30):
        cc.on_ack(2000, i * 0.05, 0.05)
    cc.on_congestion(1.6, cc.cwnd)
    for i in range(10):
        cc.on_ack(2000, 2.0 + i * 0.05, 0.05)
    before = cc.undo_state()
    cwnd = cc.cwnd
    cc.on_rto(3.0, cwnd)
    assert cc.cwnd == 1000
    cc.undo(before)
    assert cc.cwnd == cwnd and cc.undo_state() == before


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_slow_start_then_loss_then_rto(cls) -> None:
    mss = 1000
    cc = cls(mss, 10 * mss)
    cc.on_ack(5000, 0.0, 0.05)
    assert cc.cwnd == 12 * mss  # byte counting, at most 2 SMSS per ACK
    cc.on_congestion(1.0, cc.cwnd)
    assert cc.cwnd == cc.ssthresh == int(12 * mss * cls.beta)
    cc.on_rto(2.0, 8 * mss)
    assert cc.cwnd == mss
    assert cc.ssthresh >= 2 * mss
    cc.on_recovery_end()
    assert cc.cwnd == cc.ssthresh


def test_newreno_adds_one_segment_per_window() -> None:
    cc = NewReno(1000, 10000)
    cc.ssthresh = 10000
    for _ in range(10):
        cc.on_ack(1000, 0.0, 0.1)
    assert cc.cwnd == 11000


def test_cubic_is_concave_below_wmax_and_convex_above() -> None:
    mss = 1000
    cc = Cubic(mss, 100 * mss)
    cc.on_congestion(0.0, 100 * mss)  # W_max = 100 segments, cwnd = 70
    assert cc.cwnd == 70 * mss
    k = cc.k if cc.epoch_start is not None else None
    now = 0.0
    growth = []
    for _ in range(60):
        now += 0.1
        before = cc.cwnd
        for _ in range(max(cc.cwnd // mss, 1)):
            cc.on_ack(mss, now, 0.1)
        growth.append(cc.cwnd - before)
    k = cc.k
    assert k > 0
    plateau = int(k / 0.1)
    # Fast at first, slow near W_max (concave), faster again beyond it (convex).
    assert growth[0] > growth[plateau - 1]
    assert growth[-1] > growth[plateau]
    assert cc.cwnd > 100 * mss


def test_cubic_fast_convergence_lowers_wmax() -> None:
    cc = Cubic(1000, 100_000)
    cc.on_congestion(0.0, 100_000)
    cc.on_congestion(0.0, 70_000)  # a second loss below the previous W_max
    assert cc.w_max == pytest.approx(70_000 * (1 + 0.7) / 2)


def test_factory() -> None:
    assert make_congestion_control("cubic", 1000, 10000).name == "cubic"
    assert make_congestion_control("newreno", 1000, 10000).name == "newreno"
    with pytest.raises(ValueError):
        make_congestion_control("bbr", 1000, 10000)
