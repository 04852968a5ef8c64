"""TcpConnection state transitions and mechanisms, driven segment by segment by hand."""

from __future__ import annotations

import pytest

from tether.netstack.tcp import (
    ConnectionClosed,
    ConnectionReset,
    DataReadable,
    Established,
    PeerEof,
    State,
    TcpConfig,
    TcpConnection,
)
from tether.netstack.wire import ACK, FIN, PSH, RST, SYN, build_segment, parse_segment

LOCAL4, PEER4 = bytes([203, 0, 113, 9]), bytes([192, 168, 90, 2])
LOCAL6 = bytes.fromhex("20010db8000000000000000000000009")
PEER6 = bytes.fromhex("fd000090000000000000000000000002")
M = 0xFFFFFFFF


class Peer:
    """Hand-driven peer: builds segments for the connection and parses what it sends back."""

    def __init__(
        self,
        *,
        ts: bool = True,
        sack: bool = True,
        ws: int | None = 7,
        mss: int | None = 1380,
        window: int = 65535,
        isn: int = 1000,
        conn_isn: int = 5000,
        v6: bool = False,
        connect: bool = True,
        **config,
    ) -> None:
        self.local, self.peer = (LOCAL6, PEER6) if v6 else (LOCAL4, PEER4)
        self.ts = ts
        self.ws = ws or 0
        self.now = 0.0
        self.seq = (isn + 1) & M  # our next sequence number
        self.tsval = 100
        syn = self.make(SYN, seq=isn, ack=0, window=window, mss=mss, wscale=ws, sackok=sack)
        self.c = TcpConnection(
            syn,
            local_addr=self.local,
            remote_addr=self.peer,
            now=0.0,
            isn=conn_isn,
            config=TcpConfig(**config),
        )
        self.synack = None
        if connect:
            self.c.receive_host_connected(0.0)
            (self.synack,) = self.out()
            self.ack_seq = (self.synack.seq + 1) & M  # what we acknowledge

    def make(self, flags, *, seq=None, ack=None, window=None, payload=b"", mss=None, wscale=None,
             sackok=False, sack=(), tsval=None, tsecr=None):  # fmt: skip
        ts = None
        if self.ts:
            self.tsval += 1
            ts = (self.tsval if tsval is None else tsval, tsecr or 0)
        data = build_segment(
            self.peer, self.local, 40000, 443,
            self.seq if seq is None else seq,
            (self.ack_seq if ack is None else ack) if flags & ACK else 0,
            flags, 65535 if window is None else window, payload,
            mss=mss, wscale=wscale, sack_permitted=sackok, timestamps=ts, sack_blocks=sack,
        )  # fmt: skip
        return parse_segment(self.peer, self.local, data)

    def send(self, flags=ACK, *, at=None, advance=True, **kw):
        if at is not None:
            self.now = at
        seg = self.make(flags, **kw)
        self.c.receive_segment(seg, self.now)
        if advance and "seq" not in kw:
            self.seq = (self.seq + seg.seg_len) & M
        return seg

    def out(self, at=None):
        if at is not None:
            self.now = at
        return [parse_segment(self.local, self.peer, s) for s in self.c.take_segments(self.now)]

    def establish(self):
        self.send(ACK, window=65535 >> self.ws << 0 if not self.ws else 65535)
        assert self.c.state is State.ESTABLISHED
        assert self.c.take_events() == [Established()]
        return self

    def tick(self, at):
        self.now = at
        self.c.handle_timer(at)
        return self.out()

    def data_to_us(self, n: int, at=None) -> list:
        data = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert self.c.receive_host_data(data, self.now) == n
        return self.out(at)


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_waits_for_the_host_and_negotiates_options() -> None:
    p = Peer(connect=False)
    assert p.c.state is State.SYN_RECEIVED_PENDING
    assert p.out() == []
    assert p.c.next_timer() == 30.0  # connect timeout
    p.c.receive_host_connected(0.0)
    (sa,) = p.out()
    assert sa.flags == SYN | ACK
    assert (sa.seq, sa.ack) == (5000, 1001)
    assert sa.mss == 1380  # MTU 1420 - 40
    assert sa.wscale is not None and sa.sack_permitted
    assert sa.tsecr == 101  # echoes the SYN's TSval
    assert p.c.state is State.SYN_RECEIVED
    p.ack_seq = 5001
    p.establish()


def test_options_not_offered_are_not_used() -> None:
    p = Peer(ts=False, sack=False, ws=None, mss=None)
    sa = p.synack
    assert (sa.wscale, sa.sack_permitted, sa.tsval) == (None, False, None)
    assert sa.window == 65535
    p.establish()
    segs = p.data_to_us(2000)
    assert [len(s.payload) for s in segs] == [536, 536, 536, 392]  # RFC 9293 default MSS
    assert all(s.tsval is None and not s.sack_blocks for s in segs)


def test_ipv6_clamps_mss_to_mtu_minus_60() -> None:
    p = Peer(v6=True, mss=9000)
    assert p.synack.mss == 1360
    p.establish()
    assert {len(s.payload) for s in p.data_to_us(5000)[:-1]} == {1360 - 12}


def test_host_refused_resets_the_syn() -> None:
    p = Peer(connect=False)
    p.c.receive_host_refused(0.0)
    (rst,) = p.out()
    assert (rst.flags, rst.seq, rst.ack) == (RST | ACK, 0, 1001)
    assert p.c.state is State.CLOSED and p.c.next_timer() is None
    assert p.c.take_events() == [ConnectionClosed()]


def test_host_unreachable_closes_silently_for_icmp() -> None:
    p = Peer(connect=False)
    p.c.receive_host_unreachable(0.0)
    assert p.out() == [] and p.c.closed
    assert p.c.take_events() == [ConnectionClosed()]


def test_connect_timeout() -> None:
    p = Peer(connect=False)
    assert p.tick(30.0) == []
    assert p.c.take_events() == [ConnectionReset("connect-timeout"), ConnectionClosed()]


def test_syn_retransmission_while_pending_is_ignored_then_resends_synack() -> None:
    p = Peer(connect=False)
    p.send(SYN, seq=1000, advance=False)
    assert p.out() == []
    p.c.receive_host_connected(0.1)
    p.out()
    p.send(SYN, seq=1000, advance=False)
    (sa,) = p.out()
    assert sa.flags == SYN | ACK


def test_synack_is_retransmitted_with_backoff_then_given_up() -> None:
    p = Peer()
    times = []
    t = 0.0
    for _ in range(5):
        t = p.c.next_timer()
        times.append(t)
        (sa,) = p.tick(t)
        assert sa.flags == SYN | ACK
    assert times == [1.0, 3.0, 7.0, 15.0, 31.0]
    (rst,) = p.tick(p.c.next_timer())
    assert rst.flags & RST
    assert p.c.take_events() == [ConnectionReset("handshake-timeout"), ConnectionClosed()]


def test_bad_ack_in_syn_received_gets_a_reset() -> None:
    p = Peer()
    p.send(ACK, ack=4242, advance=False)
    (rst,) = p.out()
    assert (rst.flags, rst.seq) == (RST, 4242)
    assert p.c.state is State.SYN_RECEIVED


def test_data_on_the_handshake_ack_is_delivered() -> None:
    p = Peer()
    p.send(ACK | PSH, payload=b"GET /")
    assert p.c.state is State.ESTABLISHED
    assert p.c.take_events() == [Established(), DataReadable()]
    assert p.c.take_peer_data() == b"GET /"


# -- resets and challenge ACKs (RFC 5961) --------------------------------------------------------


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    p = Peer().establish()
    p.send(RST, advance=False)
    assert p.c.closed and p.out() == []
    assert p.c.take_events() == [ConnectionReset("peer-reset"), ConnectionClosed()]


def test_rst_in_window_but_not_exact_draws_a_rate_limited_challenge_ack() -> None:
    p = Peer().establish()
    p.send(RST, seq=p.seq + 100, advance=False)
    (ack,) = p.out()
    assert ack.flags == ACK and ack.ack == p.seq
    p.send(RST, seq=p.seq + 200, advance=False)
    assert p.out() == []  # rate limited
    p.send(RST, seq=p.seq + 300, advance=False, at=1.0)
    assert len(p.out()) == 1
    assert p.c.state is State.ESTABLISHED


def test_rst_outside_the_window_is_ignored() -> None:
    p = Peer().establish()
    p.send(RST, seq=p.seq + 10**6, advance=False)
    assert p.out() == [] and p.c.state is State.ESTABLISHED


def test_syn_in_established_draws_a_challenge_ack() -> None:
    p = Peer().establish()
    p.send(SYN, seq=p.seq + 5, advance=False)
    (ack,) = p.out()
    assert ack.flags == ACK and p.c.state is State.ESTABLISHED


def test_ack_of_unsent_data_is_answered_and_ignored() -> None:
    p = Peer().establish()
    p.send(ACK, ack=p.ack_seq + 5000, advance=False)
    (ack,) = p.out()
    assert ack.ack == p.seq and p.c.tx.snd_una == 5001


def test_paws_drops_old_timestamps() -> None:
    p = Peer().establish()
    p.send(ACK | PSH, payload=b"new", tsval=500)
    p.out()
    p.send(ACK | PSH, payload=b"old", tsval=400)
    (ack,) = p.out()
    assert p.c.take_peer_data() == b"new"
    assert ack.ack == p.seq - 3


# -- receiving ------------------------------------------------------------------------------------


def test_delayed_ack_then_ack_every_second_full_segment() -> None:
    p = Peer(delayed_ack=0.04).establish()
    p.send(ACK, payload=b"x" * 1368, at=1.0)
    assert p.out() == []
    assert p.c.next_timer() == pytest.approx(1.04)
    p.send(ACK, payload=b"x" * 1368)
    (ack,) = p.out()
    assert ack.ack == p.seq
    p.send(ACK, payload=b"y" * 100, at=2.0)
    assert p.out() == []
    (ack,) = p.tick(2.04)
    assert ack.ack == p.seq
    assert p.c.rcv_available == 2 * 1368 + 100


def test_out_of_order_data_is_sacked_at_once_and_reassembled() -> None:
    p = Peer().establish()
    base = p.seq
    p.send(ACK, seq=base + 100, payload=b"b" * 100, advance=False)
    (ack,) = p.out()
    assert ack.ack == base
    assert ack.sack_blocks == ((base + 100, base + 200),)
    p.send(ACK, seq=base + 300, payload=b"d" * 100, advance=False)
    (ack,) = p.out()
    assert ack.sack_blocks == ((base + 300, base + 400), (base + 100, base + 200))
    p.send(ACK, seq=base, payload=b"a" * 100, advance=False)
    (ack,) = p.out()
    assert ack.ack == base + 200
    p.send(ACK, seq=base + 200, payload=b"c" * 100, advance=False)
    (ack,) = p.out()
    assert ack.ack == base + 400 and not ack.sack_blocks
    assert p.c.take_peer_data() == b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 100


def test_out_of_order_fin_is_processed_when_the_gap_fills() -> None:
    p = Peer().establish()
    base = p.seq
    p.send(ACK | FIN, seq=base + 5, payload=b"world", advance=False)
    assert p.c.state is State.ESTABLISHED
    p.send(ACK, seq=base, payload=b"hello", advance=False)
    assert p.c.state is State.CLOSE_WAIT
    assert p.c.peer_eof
    assert p.c.take_peer_data() == b"helloworld"
    (ack,) = p.out()
    assert ack.ack == base + 11


def test_duplicate_data_is_acked_not_delivered_twice() -> None:
    p = Peer().establish()
    seg = p.send(ACK, payload=b"once")
    p.out()
    p.send(ACK, seq=seg.seq, payload=b"once", advance=False)
    (ack,) = p.out()
    assert ack.ack == p.seq and p.c.take_peer_data() == b"once"


def test_receive_window_closes_then_a_read_reopens_it_at_once() -> None:
    p = Peer(recv_buffer=20000, ws=0, delayed_ack=0.0).establish()
    assert p.c.rcv_wscale == 0
    for _ in range(20):
        p.send(ACK, payload=b"z" * 1000)
    acks = p.out()
    assert acks[-1].window == 0
    p.send(ACK, payload=b"!")  # beyond the window: dropped, ACKed
    (ack,) = p.out()
    assert ack.ack == p.seq - 1 and ack.window == 0
    p.seq -= 1
    assert len(p.c.take_peer_data(10000)) == 10000
    (upd,) = p.out()
    assert upd.window == 10000 and upd.ack == p.seq


def test_small_reads_do_not_advertise_silly_windows() -> None:
    p = Peer(recv_buffer=20000, ws=0).establish()
    for _ in range(20):
        p.send(ACK, payload=b"z" * 1000)
    p.out()
    p.c.take_peer_data(10)
    assert p.out() == []
    p.send(ACK, seq=p.seq - 1, advance=False)  # a keep-alive-like probe
    (ack,) = p.out()
    assert ack.window == 0  # 10 bytes free is not worth announcing


# -- sending ---------------------------------------------------------------------------------------


def test_initial_window_is_ten_segments_and_grows() -> None:
    p = Peer().establish()
    segs = p.data_to_us(100_000, at=0.1)
    assert len(segs) == 10
    assert all(len(s.payload) == 1368 for s in segs)
    assert segs[-1].flags == ACK  # PSH only on the last buffered byte
    p.send(ACK, ack=segs[4].seq + 1368, at=0.2)
    assert len(p.out()) >= 5 + 2  # five freed plus slow-start growth


def test_send_buffer_bound_and_host_send_space() -> None:
    p = Peer(send_buffer=5000).establish()
    assert p.c.host_send_space() == 5000
    assert p.c.receive_host_data(b"a" * 8000, p.now) == 5000
    assert p.c.host_send_space() == 0
    segs = p.out()
    p.send(ACK, ack=(segs[0].seq + 1368) & M)
    assert p.c.host_send_space() == 1368


def test_retransmission_timeout_backs_off_then_aborts() -> None:
    p = Peer(max_retransmits=3).establish()
    (seg,) = p.data_to_us(100, at=1.0)
    deadlines = []
    for _ in range(3):
        t = p.c.next_timer()
        deadlines.append(round(t - 1.0, 6))
        (rx,) = p.tick(t)
        assert rx.seq == seg.seq and bytes(rx.payload) == bytes(seg.payload)
    # Handshake RTT ~0; before data is timed the floor is the 500 ms a peer may delay an ACK
    # (+ 1 ms granularity); then doubling.
    assert deadlines == [0.501, 1.503, 3.507]
    (rst,) = p.tick(p.c.next_timer())
    assert rst.flags & RST
    assert p.c.take_events() == [ConnectionReset("retransmission-timeout"), ConnectionClosed()]
    assert p.c.next_timer() is None


def test_rtt_from_timestamps_sets_rto() -> None:
    p = Peer().establish()
    (seg,) = p.data_to_us(100, at=1.0)
    p.send(ACK, ack=(seg.seq + 100) & M, tsecr=seg.tsval, at=1.05)
    rtt = p.c.tx.rtt
    assert rtt.latest == pytest.approx(0.05, abs=0.0011)
    assert rtt.data_timed
    assert rtt.rto == pytest.approx(rtt.srtt + 0.2 + 0.001)  # the floor is on the variance


def test_rtt_without_timestamps_uses_karn() -> None:
    p = Peer(ts=False).establish()
    (seg,) = p.data_to_us(100, at=1.0)
    before = p.c.tx.rtt.latest
    p.tick(p.c.next_timer())  # retransmitted: not timed
    p.send(ACK, ack=(seg.seq + 100) & M, at=2.5)
    assert p.c.tx.rtt.latest == before  # Karn: an ambiguous ACK gives no sample
    (seg2,) = p.data_to_us(100, at=3.0)
    p.send(ACK, ack=(seg2.seq + 100) & M, at=3.3)
    assert p.c.tx.rtt.latest == pytest.approx(0.3)


def test_three_dupacks_fast_retransmit_and_newreno_partial_ack() -> None:
    p = Peer(sack=False, congestion="newreno").establish()
    segs = p.data_to_us(10 * 1368, at=1.0)
    una = segs[0].seq
    for _ in range(3):
        p.send(ACK, ack=una, at=1.1)
    (rx,) = p.out()[:1]
    assert rx.seq == una  # fast retransmit of the first segment
    assert p.c.tx.in_recovery
    assert p.c.tx.cc.ssthresh == 5 * 1368
    p.send(ACK, ack=segs[3].seq, at=1.2)  # partial ACK: segment 3 lost too
    out = p.out()
    assert out[0].seq == segs[3].seq
    p.send(ACK, ack=(segs[-1].seq + 1368) & M, at=1.3)
    assert not p.c.tx.in_recovery


def test_sack_recovery_resends_only_the_holes() -> None:
    p = Peer(initial_window_segments=10).establish()
    segs = p.data_to_us(10 * 1368, at=1.0)
    una = segs[0].seq
    # Segments 1 and 4 lost; the rest arrive and are SACKed one ACK at a time.
    seen = []
    for i in (2, 3, 5, 6):
        blocks = [(segs[2].seq, (segs[i].seq + 1368) & M)] if i < 4 else [
            (segs[5].seq, (segs[i].seq + 1368) & M), (segs[2].seq, segs[4].seq)
        ]  # fmt: skip
        p.send(ACK, ack=(una + 1368) & M, sack=blocks, at=1.1)
        seen += p.out()
    rxed = [s.seq for s in seen if s.payload and (s.seq - una) & M < 10 * 1368]
    assert segs[1].seq in rxed
    assert segs[4].seq in rxed
    assert not {segs[2].seq, segs[3].seq, segs[5].seq, segs[6].seq} & set(rxed)


def test_zero_window_persist_probes_then_resume() -> None:
    p = Peer().establish()
    p.send(ACK, window=0, at=0.5)
    assert p.data_to_us(3000, at=1.0) == []
    d = p.c.next_timer()
    assert d == pytest.approx(1.501)  # one RTO (no data timed yet: 500 ms ACK-delay floor)
    (probe,) = p.tick(d)
    assert probe.seq == p.ack_seq - 1 and not probe.payload
    assert p.c.next_timer() == pytest.approx(d + 2 * 0.501)  # backed off
    p.send(ACK, window=100, at=2.5)
    segs = p.out()
    assert sum(len(s.payload) for s in segs) == 3000  # 100 << 7 bytes of window: all of it


def test_persist_gives_up_when_probes_go_unanswered() -> None:
    p = Peer(max_retransmits=2).establish()
    p.send(ACK, window=0)
    p.data_to_us(10)
    for _ in range(2):
        (probe,) = p.tick(p.c.next_timer())
    (rst,) = p.tick(p.c.next_timer())
    assert rst.flags & RST
    assert ConnectionReset("persist-timeout") in p.c.take_events()


def _close_window_over_lost_data(p: Peer) -> tuple[list, int]:
    """The connection sends five segments; the peer gets the first, then its buffer is full:
    it ACKs with window 0 (it shrank the window over data in flight) and the rest are lost."""
    segs = p.data_to_us(5 * 1368, at=1.0)
    una = (segs[0].seq + 1368) & M
    p.send(ACK, ack=una, window=0, at=1.05)
    assert p.out() == []
    return segs, una


def test_closed_window_over_data_in_flight_is_probed_not_timed_out() -> None:
    """Regression: each RTO counted toward max_retransmits although the peer answered every
    retransmission (window still 0), so the connection was reset after max_retransmits RTOs;
    and every duplicate ACK sent the next segment behind into the closed window. RFC 9293 §3.8.6
    (SHLD-17) and RFC 1122 §4.2.2.17: no timeout for data beyond the right edge while the peer
    answers; the segment at SND.UNA probes the window."""
    p = Peer(max_retransmits=3).establish()
    segs, una = _close_window_over_lost_data(p)
    for _ in range(12):  # four times max_retransmits, backing off to max_rto
        t = p.c.next_timer()
        (probe,) = p.tick(t)
        assert probe.seq == una and len(probe.payload) == 1368  # only the segment at SND.UNA
        p.send(ACK, ack=una, window=0, at=t + 0.01)  # dropped, answered
        assert p.out() == []  # nothing more into the closed window
        assert p.c.state is State.ESTABLISHED
    assert t > 200  # minutes of a closed window
    p.send(ACK, ack=una, window=200, at=t + 1.0)  # the peer's application read
    resent = p.out()
    for k in range(10):  # slow start after the timeouts: the peer ACKs what arrives
        if not resent:
            break
        last = resent[-1]
        p.send(ACK, ack=(last.seq + len(last.payload)) & M, window=200, at=t + 1.1 + k / 10)
        resent = p.out()
    assert last.seq == segs[-1].seq and resent == []
    assert p.c.tx.snd_una == p.c.tx.snd_max and p.c.take_events() == []


def test_closed_window_over_data_in_flight_gives_up_when_the_peer_goes_silent() -> None:
    p = Peer(max_retransmits=3).establish()
    _, una = _close_window_over_lost_data(p)
    for _ in range(3):
        (probe,) = p.tick(p.c.next_timer())
        assert probe.seq == una
    (rst,) = p.tick(p.c.next_timer())
    assert rst.flags & RST
    assert ConnectionReset("retransmission-timeout") in p.c.take_events()


def test_probing_a_closed_window_does_not_hold_off_the_idle_timeout() -> None:
    """Retransmitting the same octets into a closed window is no traffic for the idle timeout
    (as zero-length persist probes are not): a peer that answers but never opens its window is
    let go after `idle_timeout`, not kept forever."""
    p = Peer(idle_timeout=300.0).establish()
    _, una = _close_window_over_lost_data(p)
    while p.c.state is State.ESTABLISHED:
        t = p.c.next_timer()
        out = p.tick(t)
        p.send(ACK, ack=una, window=0, at=t + 0.01)
    assert ConnectionReset("idle-timeout") in p.c.take_events()
    assert 300.0 <= t <= 301.0 and out[-1].flags & RST


# -- closing --------------------------------------------------------------------------------------


def test_active_close_through_time_wait() -> None:
    p = Peer(time_wait=4.0).establish()
    p.c.receive_host_data(b"bye", p.now)
    p.c.receive_host_eof(1.0)
    assert p.c.state is State.FIN_WAIT_1
    assert p.c.host_send_space() == 0 and p.c.receive_host_data(b"more", p.now) == 0
    (seg,) = p.out()
    assert seg.flags & FIN and bytes(seg.payload) == b"bye"
    p.send(ACK, ack=(seg.seq + 4) & M, at=1.1)
    assert p.c.state is State.FIN_WAIT_2
    p.send(ACK | FIN, at=1.2)
    assert p.c.state is State.TIME_WAIT
    assert p.c.take_events() == [PeerEof()]
    (ack,) = p.out()
    assert ack.ack == p.seq
    p.send(ACK | FIN, seq=p.seq - 1, advance=False, at=3.0)  # our ACK was lost
    (ack,) = p.out()
    assert ack.ack == p.seq
    assert p.c.next_timer() == pytest.approx(7.0)  # restarted
    p.send(RST, advance=False, at=3.5)
    assert p.c.state is State.TIME_WAIT  # RFC 1337
    assert p.tick(7.0) == []
    assert p.c.closed and p.c.reset_reason is None and p.c.next_timer() is None
    assert p.c.take_events() == [ConnectionClosed()]


def test_passive_close() -> None:
    p = Peer().establish()
    p.send(ACK | FIN | PSH, payload=b"last", at=1.0)
    assert p.c.state is State.CLOSE_WAIT
    assert p.c.take_events() == [DataReadable(), PeerEof()]
    assert p.c.take_peer_data() == b"last"
    (ack,) = p.out()
    assert ack.ack == p.seq
    p.c.receive_host_data(b"reply", p.now)
    p.c.receive_host_eof(1.1)
    assert p.c.state is State.LAST_ACK
    (seg,) = p.out()
    assert seg.flags & FIN
    p.send(ACK, ack=(seg.seq + 6) & M, at=1.2)
    assert p.c.closed and p.c.take_events() == [ConnectionClosed()]
    assert p.c.next_timer() is None


def test_simultaneous_close() -> None:
    p = Peer().establish()
    p.c.receive_host_eof(1.0)
    (fin,) = p.out()
    p.send(ACK | FIN, ack=fin.seq, at=1.1)  # crosses our FIN
    assert p.c.state is State.CLOSING
    p.send(ACK, ack=(fin.seq + 1) & M, at=1.2)
    assert p.c.state is State.TIME_WAIT


def test_fin_retransmitted_on_timeout_in_last_ack() -> None:
    p = Peer().establish()
    p.send(ACK | FIN)
    p.c.receive_host_eof(0.0)
    (fin,) = p.out()
    (again,) = p.tick(p.c.next_timer())
    assert again.flags & FIN and again.seq == fin.seq


def test_host_reset_sends_rst() -> None:
    p = Peer().establish()
    p.c.receive_host_reset(1.0)
    (rst,) = p.out()
    assert rst.flags & RST and rst.seq == p.ack_seq
    assert p.c.closed and p.c.take_events() == [ConnectionClosed()]


def test_new_syn_ends_time_wait() -> None:
    p = Peer().establish()
    p.c.receive_host_eof(0.0)
    (fin,) = p.out()
    p.send(ACK | FIN, ack=(fin.seq + 1) & M)
    assert p.c.state is State.TIME_WAIT
    p.send(SYN, seq=p.seq + 100000, advance=False, at=1.0)
    assert p.c.closed


def test_keepalive_probes_then_abort() -> None:
    p = Peer(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_probes=2).establish()
    assert p.c.next_timer() == pytest.approx(10.0)
    (probe,) = p.tick(10.0)
    assert probe.seq == p.ack_seq - 1 and not probe.payload
    p.send(ACK, at=10.1)  # answered: idle again
    assert p.c.next_timer() == pytest.approx(20.1)
    p.tick(20.1)
    p.tick(22.1)
    (rst,) = p.tick(24.1)
    assert rst.flags & RST
    assert ConnectionReset("keepalive-timeout") in p.c.take_events()


def test_idle_timeout() -> None:
    p = Peer(keepalive_idle=None, idle_timeout=100.0).establish()
    assert p.c.next_timer() == pytest.approx(100.0)
    (rst,) = p.tick(100.0)
    assert rst.flags & RST
    assert ConnectionReset("idle-timeout") in p.c.take_events()


def test_sequence_numbers_wrap() -> None:
    p = Peer(isn=M - 10, conn_isn=M - 5).establish()
    for _ in range(5):
        p.send(ACK, payload=b"w" * 7)
    assert p.c.take_peer_data() == b"w" * 35
    segs = p.data_to_us(3000)
    assert segs[0].seq == M - 4 and segs[1].seq == (M - 4 + 1368) & M
    p.send(ACK, ack=(segs[-1].seq + len(segs[-1].payload)) & M)
    assert not p.c.tx.outstanding


def test_constructor_wants_a_plain_syn() -> None:
    p = Peer()
    with pytest.raises(ValueError):
        TcpConnection(p.make(ACK), local_addr=LOCAL4, remote_addr=PEER4, now=0.0, isn=1)


def test_tiny_segments_at_the_window_edge_cannot_grow_the_buffer() -> None:
    """Window rounding (scale 3 here) must not let the edge creep while the host does not read."""
    p = Peer(recv_buffer=300_000, delayed_ack=0.0).establish()
    assert p.c.rcv_wscale == 3
    for _ in range(299):
        p.send(ACK, payload=b"f" * 1000)
        p.out()
    p.send(ACK, payload=b"f" * 995)  # leave a window that is not a multiple of 2**3
    p.out()
    for _ in range(2000):
        p.send(ACK, payload=b"1")
        p.tick(p.now)  # the delayed ACK goes out: each ACK recomputes the window
    assert p.c.rcv_available <= 300_000 + 7


@pytest.mark.parametrize(
    "bad",
    [
        {"recv_buffer": 0},
        {"max_ooo_ranges": 0},
        {"min_rto": 0.0},
        {"min_rto": 2.0, "max_rto": 1.0},
        {"congestion": "bbr"},
        {"initial_window_segments": 0},
    ],
)
def test_config_is_validated(bad) -> None:
    with pytest.raises(ValueError):
        TcpConfig(**bad)
