"""The sending half of a TCP connection: what to (re)transmit, when, and how much.

This is the loss-recovery core (the role aioquic's `recovery.py` plays for QUIC): it owns SND.UNA,
SND.NXT, SND.WND, the send buffer, the SACK scoreboard, RTT/RTO, congestion control and the
retransmission and persist timers. The connection feeds it ACK information and asks it to fill the
network; it hands segments back through the connection's `emit` callback, because only the
connection knows what goes in the ACK, window and option fields.

Sequence numbers are absolute integers (see `buffers`). SND.MAX is the highest sequence number
sent so far; SND.NXT is where new transmission continues and falls back to SND.UNA after a timeout
(go-back-N, as RFC 9293 §3.8.1 describes retransmission).

Loss recovery:
- With SACK (the normal case: every current phone stack offers it): RFC 6675 conservative
  recovery. Enter on DupThresh duplicate ACKs or when IsLost(SND.UNA); `pipe` rather than FlightSize
  governs sending; NextSeg() rules 1-3 choose holes to retransmit and new data to send.
- Without SACK: RFC 6582 NewReno, expressed in the same pipe terms the way Linux does it: every
  duplicate ACK stands for one segment that left the network (a "virtual SACK"), a partial ACK
  retransmits the next segment at once.
- Limited transmit (RFC 3042) on the first two duplicate ACKs; initial window from RFC 6928.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.netstack.tcp.buffers import SackScoreboard, SendBuffer
from tether.netstack.tcp.congestion import RttEstimator, StandingQueue, make_congestion_control
from tether.netstack.tcp.events import TcpConfig

__all__ = ["SendSide"]

DUPTHRESH = 3


class SendSide:
    """Sender state of one connection. `emit(seq, payload_len, fin, now)` builds and queues."""

    __slots__ = (
        "buf",
        "snd_una",
        "snd_nxt",
        "snd_max",
        "snd_wnd",
        "snd_wl1",
        "snd_wl2",
        "max_snd_wnd",
        "snd_wscale",
        "mss",
        "sack_ok",
        "fin_seq",
        "rtt",
        "cc",
        "queue",
        "ack_queued",
        "initial_window",
        "scoreboard",
        "dupacks",
        "in_recovery",
        "recover",
        "high_rxt",
        "reno_sacked",
        "fast_rxt",
        "rto_deadline",
        "persist_deadline",
        "persist_backoff",
        "retransmits",
        "probes",
        "max_retransmits",
        "rtt_seq",
        "rtt_start",
        "rtt_time",
        "syn_end",
        "frto",
        "rto_holes",
        "rto_time",
        "rto_expired",
        "rxt_end",
        "undo",
        "spurious_timeouts",
        "cwnd_limited",
        "last_send",
        "emit",
        "timeouts",
        "recoveries",
        "queue_reductions",
        "retransmitted",
    )

    def __init__(
        self,
        *,
        iss: int,
        irs: int,
        mss: int,
        snd_wnd: int,
        snd_wscale: int,
        sack_ok: bool,
        config: TcpConfig,
        now: float,
        emit: Callable[[int, int, bool, float], None],
    ) -> None:
        self.buf = SendBuffer(iss + 1, config.send_buffer)
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = snd_wnd
        self.snd_wl1 = irs
        self.snd_wl2 = iss
        self.max_snd_wnd = snd_wnd
        self.snd_wscale = snd_wscale
        self.mss = mss
        self.sack_ok = sack_ok
        self.fin_seq: int | None = None
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        # RFC 6928: min(10*MSS, max(2*MSS, 14600)), generalised to the configured segment count.
        iw = config.initial_window_segments
        self.initial_window = min(iw * mss, max(2 * mss, iw * 1460))
        self.cc = make_congestion_control(config.congestion, mss, self.initial_window)
        self.queue = StandingQueue(config.queue_delay_target)
        # How long the ACK being processed waited in the exit's own socket queue: the standing
        # queue is judged on the path's delay, not on the exit's backlog (the connection sets it).
        self.ack_queued = 0.0
        self.scoreboard = SackScoreboard(config.max_sack_ranges)
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss  # RFC 6582 "recover"; also RFC 6675 RecoveryPoint
        self.high_rxt = iss  # RFC 6675 HighRxt
        self.reno_sacked = 0
        self.fast_rxt = False
        self.rto_deadline: float | None = None
        self.persist_deadline: float | None = None
        self.persist_backoff = 0
        self.retransmits = 0
        self.probes = 0
        self.max_retransmits = config.max_retransmits
        self.rtt_seq: int | None = None  # the end of the segment being timed
        self.rtt_start = iss
        self.rtt_time = 0.0
        self.syn_end = iss + 1  # an ACK above this covers data
        # After a timeout, until the next ACK of new data: was it spurious? (see _spurious)
        self.frto = False
        self.rto_holes = False  # the peer had reported holes (SACK) when the timeout went off
        self.rto_time = 0.0  # when the first timeout of the episode went off
        self.rto_expired = 0.0  # the RTO it waited
        self.rxt_end = iss  # end of what has been resent since
        self.undo: tuple | None = None  # congestion state from before the timeout
        self.cwnd_limited = False
        self.last_send = now
        self.emit = emit
        # Counters for metrics and tests: RTO expiries, loss-recovery episodes, segments resent.
        self.timeouts = 0
        self.recoveries = 0
        self.queue_reductions = 0  # windows given up for a standing queue (StandingQueue)
        self.retransmitted = 0
        self.spurious_timeouts = 0

    # -- state the connection asks about -------------------------------------------------------

    @property
    def data_end(self) -> int:
        """One past the last sequence number the host has given us (the FIN counts)."""
        return self.fin_seq + 1 if self.fin_seq is not None else self.buf.end

    @property
    def fin_acked(self) -> bool:
        return self.fin_seq is not None and self.snd_una > self.fin_seq

    @property
    def outstanding(self) -> bool:
        """Sent and not yet acknowledged."""
        return self.snd_max > self.snd_una

    def queue_fin(self) -> None:
        """The host is done sending: a FIN follows the last buffered byte."""
        if self.fin_seq is None:
            self.fin_seq = self.buf.end

    # -- the SYN (sent by the connection, which owns the handshake) -----------------------------

    def syn_sent(self, now: float, first: bool) -> None:
        """Account for the SYN-ACK: it occupies ISS; time it unless it is a retransmission."""
        self.snd_nxt = self.snd_max = self.snd_una + 1
        if first:
            self.rtt_start, self.rtt_seq, self.rtt_time = self.snd_una, self.snd_max, now
        else:
            self.rtt_seq = None
        self.rto_deadline = now + self.rtt.rto
        self.last_send = now

    # -- ACK processing -------------------------------------------------------------------------

    def on_ack(
        self,
        ack: int,
        seq: int,
        window: int,
        sack_blocks: list[tuple[int, int]] | None,
        ts_rtt: float | None,
        now: float,
        dup_candidate: bool,
    ) -> int:
        """Process the ACK fields of an acceptable segment (RFC 9293 §3.10.7.4, fifth check).

        `ack` and `seq` are unwrapped; the caller has already checked SND.UNA - MAX.SND.WND <= ack
        <= SND.MAX (RFC 5961 §5.2). `ts_rtt` is an RTT measured from the echoed timestamp.
        `dup_candidate`: the segment carries no data, SYN or FIN. Returns octets newly acked.
        """
        una = self.snd_una
        wnd_changed = False
        # RFC 9293 WL1/WL2 test, plus Linux's rule that an ACK of new data always carries the
        # current window: a go-back-N retransmission (lower SEQ) must not leave a stale window.
        if ack > una or self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            wnd = window << self.snd_wscale
            if wnd != self.snd_wnd:
                wnd_changed = True
                self.snd_wnd = wnd
                if wnd > self.max_snd_wnd:
                    self.max_snd_wnd = wnd
                if wnd:
                    self.persist_deadline = None
                    self.persist_backoff = 0
            self.snd_wl1 = seq
            self.snd_wl2 = ack
        self.probes = 0
        new_sack = False
        if sack_blocks and self.sack_ok:
            new_sack = self.scoreboard.update(sack_blocks, max(ack, una), self.snd_max)
        if ack > una:
            if self.frto:
                self.frto = False
                if self._spurious(ack, ts_rtt, now):
                    return ack - una
            self._new_ack(ack, ts_rtt, now)
            return ack - una
        if (
            ack == una
            and dup_candidate
            and self.snd_max > una
            and (new_sack or (not wnd_changed and not sack_blocks))
        ):
            self._duplicate_ack(now)
        return 0

    def _new_ack(self, ack: int, ts_rtt: float | None, now: float) -> None:
        acked = ack - self.snd_una
        rtt = self.rtt
        # RFC 6298 §5.7 and Karn: only a measurement clears the backoff, and only segments
        # sent once are timed (timestamps tell which transmission an ACK answers).
        timed = self.rtt_seq is not None and ack >= self.rtt_seq
        if ts_rtt is not None:
            rtt.sample(ts_rtt, ack > self.syn_end)
        elif timed:
            rtt.sample(now - self.rtt_time, self.rtt_seq > self.syn_end)
        if timed:
            # Data only: the SYN-ACK is answered at once, data may wait for a delayed ACK.
            if (
                self.rtt_seq > self.syn_end
                and self.queue.sample(
                    now - self.rtt_time - self.ack_queued, now, rtt.srtt, rtt.rttvar
                )
                and not self.in_recovery
            ):
                self.queue_reductions += 1
                self.cc.on_queue(now)
            self.rtt_seq = None
        self.snd_una = ack
        self.buf.ack_to(ack)
        if self.scoreboard:
            self.scoreboard.advance(ack)
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self.dupacks = 0
        self.retransmits = 0
        if self.in_recovery:
            if ack >= self.recover:
                self.in_recovery = False
                self.reno_sacked = 0
                self.cc.on_recovery_end()
            elif not self.sack_ok:
                # RFC 6582 partial ACK: the next segment is lost too; resend it right away.
                self.reno_sacked = max(0, self.reno_sacked - max(acked - self.mss, 0))
                self.high_rxt = ack
                self.fast_rxt = True
        elif self.cwnd_limited:
            self.cc.on_ack(acked, now, rtt.srtt)
        else:
            self.cc.app_limited()
        # RFC 6298 §5.2/5.3: stop the timer when everything is acked, else restart it.
        self.rto_deadline = None if ack >= self.snd_max else now + rtt.rto

    def _duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        una = self.snd_una
        if self.in_recovery:
            if not self.sack_ok:
                self.reno_sacked += self.mss
            return
        if una < self.recover:
            return  # RFC 6582 §3.2 step 2: no second reduction for the same window of data
        sb = self.scoreboard
        if self.dupacks >= DUPTHRESH or (
            self.sack_ok and sb and sb.lost_edge(una, self.mss, DUPTHRESH) > una
        ):
            # RFC 6675 §5 steps 4.1-4.3 / RFC 6582 §3.2 step 2.
            self.cc.on_congestion(now, self.snd_max - una)
            self.recoveries += 1
            self.in_recovery = True
            self.recover = self.snd_max
            self.high_rxt = una
            self.fast_rxt = True
            if not self.sack_ok:
                self.reno_sacked = self.dupacks * self.mss

    # -- timers -----------------------------------------------------------------------------

    def on_rto(self, now: float) -> bool:
        """Retransmission timeout (RFC 6298 §5.4-5.6, RFC 5681 §3.1). False: give up.

        While the peer's window is closed, unacknowledged data is no sign of a dead peer: its
        receiver may simply have no room (it shrank the window over data in flight). RFC 9293
        §3.8.6 (SHLD-17) and RFC 1122 §4.2.2.17 forbid timing the connection out for that as long
        as the peer answers; the retransmission of the first segment probes the window (as in
        Linux), and it counts as an unanswered probe, which any ACK clears, not as a retransmit.
        """
        self.rto_deadline = None
        una = self.snd_una
        if self.snd_max <= una:
            return True
        self.timeouts += 1
        if self.snd_wnd:
            self.retransmits += 1
            if self.retransmits > self.max_retransmits:
                return False
        else:
            self.probes += 1
            if self.probes > self.max_retransmits:
                return False
        if not self.frto:  # the first timeout since data was last acknowledged
            self.frto = True
            self.rto_time = now
            self.rto_expired = self.rtt.rto
            self.rxt_end = una
            self.rto_holes = bool(self.scoreboard)
            self.undo = self.cc.undo_state()
            self.cc.on_rto(now, self.snd_max - una)  # ssthresh held on repeated timeouts
        else:
            self.cc.cwnd = self.mss
        if self.rtt.backoff < 16:
            self.rtt.backoff += 1
        self.recover = self.snd_max
        self.in_recovery = False
        self.fast_rxt = False
        self.dupacks = 0
        self.reno_sacked = 0
        # RFC 2018 §8 / RFC 6675 §5.1: the receiver may have reneged, forget what it SACKed.
        self.scoreboard.clear()
        self.snd_nxt = una
        self.high_rxt = una
        return True

    def _spurious(self, ack: int, ts_rtt: float | None, now: float) -> bool:
        """The first ACK of new data after a timeout: was the timeout spurious, the data only
        late (a peer sitting on its ACKs, a delay spike)? Then undo it (RFC 4015 §4): put the
        congestion state back (RFC 9438 §4.9), resume with new data instead of resending what
        was never lost (SND.NXT = SND.MAX), and let the RTO clear the delay just seen.

        Detection, either of two tests (as Linux): the ACK echoes a TSval from before the
        retransmission (the Eifel test, RFC 3522), or it covers octets that were sent once,
        before the timeout, and never resent since (F-RTO's test, RFC 5682 §3.1 step 3b, applied
        to the first ACK, and only when the peer had reported no hole): not everything in
        flight was lost. The second is the one that sees a
        peer sitting on its ACKs: the resent segment reaches it as a duplicate, which it ACKs at
        once, echoing the duplicate's TSval (RFC 7323 §4.3) but covering all it had received.
        """
        eifel = ts_rtt is not None and ts_rtt > now - self.rto_time + RttEstimator.GRANULARITY
        # Not when the peer had reported holes: then data was lost, and octets it had SACKed
        # before the timeout, now covered by the cumulative ACK, prove nothing (a full queue
        # drops the resent segments too, and taking that for spurious stalls the flow).
        if not (eifel or (not self.rto_holes and self.rxt_end < min(ack, self.recover))):
            return False
        self.spurious_timeouts += 1
        self.cc.undo(self.undo)  # saved by the timeout that set `frto`
        self.undo = None
        if eifel:
            self.rtt.spurious_timeout(ts_rtt)
        else:  # the oldest octet waited at least this long
            self.rtt.spurious_timeout(now - self.rto_time + self.rto_expired)
        self._new_ack(ack, None, now)
        self.snd_nxt = max(self.snd_nxt, self.snd_max)
        return True

    def on_persist(self, now: float) -> bool:
        """Persist timer fired: the caller sends a window probe. False: the peer is gone."""
        self.probes += 1
        if self.probes > self.max_retransmits:
            return False
        if self.persist_backoff < 16:
            self.persist_backoff += 1
        self.persist_deadline = now + min(
            self.rtt.rto * (1 << self.persist_backoff), self.rtt.max_rto
        )
        return True

    # -- transmission ------------------------------------------------------------------------

    def _pipe(self, lost_edge: int) -> int:
        """RFC 6675 SetPipe(): octets believed in the network.

        pipe = un-SACKed octets - lost octets not yet retransmitted (+ retransmitted octets not
        deemed lost, which are in the network twice). With NewReno the duplicate-ACK count stands
        in for SACKed octets and only the first segment is ever presumed lost.
        """
        una = self.snd_una
        out = self.snd_max - una
        if not self.sack_ok:
            sacked = min(self.reno_sacked, max(out - self.mss, 0))
            lost = min(self.mss, out - sacked) if self.high_rxt <= una else 0
            return out - sacked - lost
        sb = self.scoreboard
        unsacked = out - sb.sacked
        h = max(self.high_rxt, una)
        if h < lost_edge:
            return unsacked - sb.unsacked_between(h, lost_edge)
        return unsacked + sb.unsacked_between(lost_edge, h)

    def _transmit(self, seq: int, n: int, now: float) -> None:
        """Send sequence space [seq, seq+n) (FIN included if it falls inside) and do the books."""
        fin_seq = self.fin_seq
        fin = fin_seq is not None and seq <= fin_seq < seq + n
        end = seq + n
        if seq < self.snd_max:
            self.retransmitted += 1
            if self.rtt_seq is not None and seq < self.rtt_seq and end > self.rtt_start:
                self.rtt_seq = None  # Karn: a retransmitted segment cannot be timed
            if self.frto and end > self.rxt_end:
                self.rxt_end = min(end, self.snd_max)
        elif self.rtt_seq is None:
            self.rtt_start, self.rtt_seq, self.rtt_time = seq, end, now
        self.emit(seq, n - 1 if fin else n, fin, now)
        if seq >= self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        if self.rto_deadline is None:
            self.rto_deadline = now + self.rtt.rto
        self.last_send = now

    def _extent(self, seq: int, limit: int, mss: int) -> int:
        """Length of the segment starting at `seq`, stopping at `limit`; a FIN rides along."""
        n = min(mss, limit - seq)
        fin_seq = self.fin_seq
        if fin_seq is not None and seq + n == fin_seq and limit > fin_seq:
            n += 1
        return n

    def _window_room(self, seq: int, n: int, wnd_edge: int) -> int:
        """How much of [seq, seq+n) may go out: all below SND.MAX or the window's right edge.

        Below SND.MAX the data went out inside an earlier window, so it is resent whatever the
        window is now (RFC 7323 §2.4 rule 4) - except into a closed window, where only the
        segment at SND.UNA goes (it probes the window, RFC 9293 §3.8.6.1): anything behind it
        would only be dropped and draw duplicate ACKs, each sending the next one.
        The FIN takes sequence space but no buffer at the receiver, so it may sit just past the
        edge (a bare FIN goes out even into a zero window).
        """
        if not self.snd_wnd and self.snd_una < seq < self.snd_max:
            return 0
        end = seq + n
        fin_seq = self.fin_seq
        if fin_seq is not None and fin_seq == end - 1 and fin_seq >= seq:
            end -= 1
            if end <= max(wnd_edge, self.snd_max):
                return n
        edge = max(wnd_edge, self.snd_max)
        return n if end <= edge else edge - seq

    def output(self, now: float, mss: int) -> None:
        """Send whatever the windows allow (`mss`: payload room in this round's segments).

        Nagle is off: the terminator relays a stream whose boundaries the host socket already
        blurred, and holding a small tail back would only add latency. Sender-side SWS avoidance
        (RFC 9293 §3.8.6.2.1) still applies while data is in flight.
        """
        una = self.snd_una
        data_end = self.data_end
        cc = self.cc
        if self.snd_max == una and now - self.last_send > self.rtt.rto:
            cc.on_idle_restart(self.initial_window)
        wnd_edge = una + self.snd_wnd
        wnd_blocked = False
        cwnd_limited = False
        sb = self.scoreboard
        if self.fast_rxt:
            # RFC 6675 §5 step 4.3 / RFC 6582: the first lost segment goes out regardless of pipe.
            self.fast_rxt = False
            hole = sb.next_hole(una, self.snd_max) if sb else (una, self.snd_max)
            if hole is not None and hole[1] > hole[0]:
                n = self._extent(hole[0], hole[1], mss)
                self._transmit(hole[0], n, now)
                self.high_rxt = max(self.high_rxt, hole[0] + n)
        if self.in_recovery:
            if self.sack_ok:
                # Only SACK evidence marks loss (RFC 6675 IsLost); an empty scoreboard during
                # recovery means the data above SND.UNA is simply in flight.
                lost_edge = sb.lost_edge(una, mss, DUPTHRESH) if sb else una
            else:
                lost_edge = una + mss  # NewReno: the first unacknowledged segment
            lost_edge = min(lost_edge, self.snd_max)
            pipe = self._pipe(lost_edge)
            cwnd = cc.cwnd
            while True:
                if cwnd - pipe < mss:
                    cwnd_limited = True
                    break
                start = max(self.high_rxt, una)
                # NextSeg() rule 1: a lost, not yet retransmitted hole.
                hole = sb.next_hole(start, lost_edge) if start < lost_edge else None
                if hole is not None and min(hole[1], self.snd_max) > hole[0]:
                    s = hole[0]
                    n = self._extent(s, min(hole[1], self.snd_max), mss)
                    self._transmit(s, n, now)
                    self.high_rxt = s + n
                    pipe += n
                    continue
                # Rule 2: new data the peer's window has room for.
                seq = self.snd_nxt
                if seq < data_end:
                    n = self._extent(seq, data_end, mss)
                    if self._window_room(seq, n, wnd_edge) >= n:
                        self._transmit(seq, n, now)
                        pipe += n
                        continue
                    wnd_blocked = True
                # Rule 3: an un-SACKed hole below the highest SACK, even if not yet deemed lost.
                if self.sack_ok and sb:
                    hole = sb.next_hole(start, sb.highest())
                    if hole is not None:
                        s = hole[0]
                        n = self._extent(s, hole[1], mss)
                        self._transmit(s, n, now)
                        self.high_rxt = s + n
                        pipe += n
                        continue
                break
        else:
            nxt = self.snd_nxt
            flight = nxt - una
            if sb and flight:
                flight = sb.unsacked_between(una, nxt)
            room = cc.cwnd + min(self.dupacks, 2) * mss - flight  # RFC 3042 limited transmit
            snd_max = self.snd_max
            while True:
                seq = self.snd_nxt
                limit = data_end
                if seq < snd_max and sb:
                    # Go-back-N after a timeout: skip what the peer has SACKed since.
                    hole = sb.next_hole(seq, snd_max)
                    if hole is None:
                        seq = self.snd_nxt = snd_max
                    else:
                        seq = self.snd_nxt = hole[0]
                        if hole[1] < snd_max:
                            limit = hole[1]
                if seq >= data_end:
                    break
                n = self._extent(seq, limit, mss)
                allowed = self._window_room(seq, n, wnd_edge)
                if allowed < n:
                    # Retransmissions below SND.MAX were inside an earlier window; past it the
                    # peer's window rules, with SWS avoidance while ACKs are still to come.
                    if allowed <= 0 or (flight and allowed < min(mss, self.max_snd_wnd // 2)):
                        wnd_blocked = True
                        break
                    n = allowed
                if n > room and flight:
                    cwnd_limited = True
                    break
                self._transmit(seq, n, now)
                room -= n
                flight += n
        self.cwnd_limited = cwnd_limited
        if wnd_blocked and self.snd_max == self.snd_una:
            if self.persist_deadline is None:
                self.persist_deadline = now + min(
                    self.rtt.rto * (1 << self.persist_backoff), self.rtt.max_rto
                )
        elif not wnd_blocked:
            self.persist_deadline = None
