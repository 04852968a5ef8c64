"""The exit's TCP sender against a peer that ACKs only from a delayed-ACK timer.

Windows waits 200 ms before it acknowledges; RFC 9293 §3.8.6.3 lets any receiver wait up to
500 ms. Such a peer's ACKs come late but come: a timeout before them is spurious, resends data
that was never lost and collapses the congestion window, so a 64 kB download took 7.4 s with 30 %
of its segments sent twice (issue 14), where Linux as the server took 2.5-3 s with none.

Here `SimPeer(delack=...)` is that receiver on a lossless 20 ms link. The sender must send nothing
twice, must never sit on data that its windows allow it to send (the ACK clock and the windows are
the only limits), and a timeout that does turn out spurious must be undone.
"""

from __future__ import annotations

import pytest

from tether.netstack.tcp import TcpConfig

from .simpeer import Harness

LATENCY = 0.01  # each way


def _harness(delack: float | None, *, ts: bool, sack: bool, rcv_buf: int = 1 << 20) -> Harness:
    h = Harness(
        config=TcpConfig(),
        peer_kw={"rcv_buf": rcv_buf, "delack": delack, "ts": ts, "sack": sack},
        isns=(1000, 0xFFFFF000),
    )
    h.link.latency = LATENCY
    h.advance(0.1)
    assert h.conn is not None and h.peer.state == "ESTABLISHED"
    return h


def _download(h: Harness, total: int, *, check_clock: bool = True) -> float:
    """The host writes `total` bytes as fast as the connection takes them; returns the time
    until the peer has them all. With `check_clock`, after every event the sender must have
    filled what its windows allow (or run out of data): no waiting but for an ACK."""
    c = h.conn
    data = bytes(range(256)) * (total // 256 + 1)
    data = data[:total]
    start = h.now
    for _ in range(100_000):
        off = len(h.host_sent)
        if off < total:
            n = c.receive_host_data(data[off : off + c.host_send_space()], h.now)
            h.host_sent += data[off : off + n]
        h.peer.read(1 << 30)
        h.pump()
        if len(h.peer.received) >= total:
            return h.now - start
        tx = c.tx
        if check_clock and tx.buf.end > tx.snd_max:  # data the host gave, not yet sent
            flight = tx.snd_max - tx.snd_una
            room = min(tx.cc.cwnd, tx.snd_wnd)
            assert flight > room - tx.mss, (
                f"idle with data and window: flight {flight}, cwnd {tx.cc.cwnd}, "
                f"wnd {tx.snd_wnd} at {h.now - start:.3f}"
            )
        assert h.step(), "nothing left to happen"
    raise AssertionError("the download did not finish")


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "nosack"])
@pytest.mark.parametrize("ts", [True, False], ids=["ts", "nots"])
@pytest.mark.parametrize("delack", [0.2, 0.5])
def test_64k_download_to_a_slow_acker_sends_nothing_twice(delack, ts, sack) -> None:
    h = _harness(delack, ts=ts, sack=sack)
    elapsed = _download(h, 64 * 1024)
    tx = h.conn.tx
    assert (tx.retransmitted, tx.timeouts) == (0, 0)
    # One ACK per delayed-ACK interval: IW10, then +2 MSS per ACK in slow start (RFC 3465):
    # 10 + 12 + 14 + 16 segments cover 64 kB in four intervals.
    interval = delack + 2 * LATENCY
    assert elapsed <= 4 * interval + 0.01
    assert bytes(h.peer.received) == bytes(h.host_sent)


@pytest.mark.parametrize("ts", [True, False], ids=["ts", "nots"])
@pytest.mark.parametrize("delack", [0.2, 0.5])
def test_bulk_to_a_slow_acker_is_clocked_by_its_acks_alone(delack, ts) -> None:
    """2 MB into a 256 kB receive buffer: the window fills, and from then on every delayed ACK
    releases a full window; nothing is resent, no timer fires."""
    h = _harness(delack, ts=ts, sack=True, rcv_buf=256 * 1024)
    elapsed = _download(h, 2 * 1000 * 1000)
    tx = h.conn.tx
    assert (tx.retransmitted, tx.timeouts) == (0, 0)
    # Bounded by the ACK clock: at most one receive window per interval once cwnd caught up.
    intervals = elapsed / (delack + 2 * LATENCY)
    assert intervals < 2_000_000 / (256 * 1024) + 30  # 30 intervals of slow start, at most


def test_a_spurious_timeout_is_detected_and_undone_without_timestamps() -> None:
    """The RTO is made shorter than the peer's ACK delay (a delay spike): the timeout fires,
    the segment at SND.UNA goes again, then the late ACK covers octets sent only once. F-RTO's
    test (RFC 5682 §3.1) calls it spurious: cwnd is put back, SND.NXT jumps to SND.MAX (nothing
    more is resent), and the RTO grows past the delay seen."""
    h = _harness(0.5, ts=False, sack=False)
    c = h.conn
    c.tx.rtt.data_timed = True  # as if data had been timed already, on a fast-ACKing path
    c.tx.rtt.sample(0.02)
    cwnd = c.tx.cc.cwnd
    _download(h, 20 * 1368, check_clock=False)
    tx = c.tx
    assert tx.timeouts == 1 and tx.spurious_timeouts == 1
    assert tx.retransmitted == 1  # only the probe at SND.UNA
    assert tx.cc.cwnd >= cwnd  # undone, then grown
    assert tx.rtt.rto > 0.5 + 2 * LATENCY


def test_a_spurious_timeout_is_detected_by_timestamps() -> None:
    """A delay spike on the path (not at the peer, which ACKs every segment): the first ACK
    echoes the original transmission's TSval (the Eifel test, RFC 3522) and the RTT sample it
    carries, the spike itself, becomes SRTT (RFC 4015 §4)."""
    h = _harness(None, ts=True, sack=True)
    c = h.conn
    c.tx.rtt.sample(0.02)  # RTO 221 ms
    h.link.latency = 0.25  # the path's delay jumps to 500 ms round trip
    _download(h, 20 * 1368, check_clock=False)
    tx = c.tx
    assert tx.timeouts == 1 and tx.spurious_timeouts == 1
    assert tx.retransmitted == 1
    assert tx.rtt.srtt == pytest.approx(0.5, abs=0.005)


def test_a_real_loss_after_a_timeout_is_not_called_spurious() -> None:
    """The first segment of a flight is lost and so are the peer's duplicate ACKs: the timeout
    is real. The ACK after the retransmission covers only what was resent, or (with timestamps)
    echoes the retransmission: no undo."""
    h = _harness(0.2, ts=True, sack=True)
    c = h.conn
    data = bytes(5 * 1368)
    assert c.receive_host_data(data, h.now) == len(data)
    h.host_sent += data
    h.pump()
    # Drop everything in flight both ways: the whole flight is lost.
    h.link.packets.clear()
    for _ in range(2000):
        h.peer.read(1 << 30)
        h.pump()
        if len(h.peer.received) >= len(data):
            break
        assert h.step()
    tx = c.tx
    assert tx.timeouts >= 1 and tx.spurious_timeouts == 0
    assert bytes(h.peer.received) == data
