"""One terminated TCP connection: a TCP endpoint toward the peer, a byte stream toward the host.

Sans-IO in the style of aioquic's `QuicConnection` and h11: nothing here reads a clock or touches
a socket. The IO shell (the exit's TCP flow table) drives it:

    conn = TcpConnection(syn, local_addr=dst_ip, remote_addr=src_ip, now=t, isn=random32)
    ... connect the host socket, then conn.receive_host_connected(t) or receive_host_refused(t) ...
    conn.receive_segment(parse_segment(src_ip, dst_ip, tcp_bytes), t)   # from the peer
    conn.receive_host_data(chunk, t)  /  conn.take_peer_data(n)  /  conn.receive_host_eof(t)
    conn.handle_timer(t) when t >= conn.next_timer()
    after any of these: for seg in conn.take_segments(t): wrap in IP(local -> remote) and send;
    for ev in conn.take_events(): react (see the event classes).

"Local" is the address/port the peer asked for (we impersonate it); "remote" is the peer. The
connection starts in SYN_RECEIVED_PENDING: the SYN-ACK is only sent once the host socket connected,
so the peer sees a refused or unreachable destination as such instead of a connection that opens
and then dies. The shell picks the ISN: the exit's TCP table draws a random one per connection
(RFC 6528's aim, unpredictability, without its keyed hash: the exit is always the passive side and
the peer picks the 4-tuples). The shell answers segments for unknown 4-tuples with
`wire.build_reset_reply`, and, when a SYN finds the connection CLOSED (e.g. it ended TIME-WAIT),
may open a new one from it. Data already read from
the peer stays readable after a clean close; after a reset it is discarded.

Timers (all deadlines in one `next_timer()`): retransmission (RFC 6298), persist (zero-window
probes, RFC 9293 §3.8.6.1), delayed ACK, keep-alive (RFC 1122 §4.2.3.6) and an idle timeout that
catch phones that vanished, TIME-WAIT, and the host-connect timeout. TIME-WAIT is `time_wait`
seconds (default 4 s) instead of 2*MSL: the terminator is never the one reusing a 4-tuple (the
phone picks ports), so TIME-WAIT here only has to re-ACK a retransmitted FIN, which a few RTOs
cover; a phone's new SYN for the same 4-tuple ends TIME-WAIT early (RFC 6191).
"""

from __future__ import annotations

from functools import partial

from tether.netstack.tcp.events import (
    ConnectionClosed,
    ConnectionReset,
    DataReadable,
    Established,
    PeerEof,
    State,
    TcpConfig,
    TcpEvent,
)
from tether.netstack.tcp.receiver import ReceiveSide
from tether.netstack.tcp.sender import SendSide
from tether.netstack.wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    addresses_sum,
    build_segment,
    timestamped_builder,
)

__all__ = ["TcpConnection"]

_M32 = 0xFFFFFFFF
_HALF = 0x80000000


# Module-level names for the states: the hot path compares with `is` without enum lookups.
(
    PENDING,
    SYN_RECEIVED,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    CLOSE_WAIT,
    CLOSING,
    LAST_ACK,
    TIME_WAIT,
    CLOSED,
) = State
# Tuples, not sets: membership tests by identity never call Enum.__hash__ (Python code).
_SENDING = (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK)
_RECEIVING = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2)
_HOST_WRITABLE = (SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT)
_KEEPALIVE = (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2)


class TcpConnection:
    """A passive TCP endpoint created from the peer's SYN. See the module docstring."""

    def __init__(
        self,
        syn: Segment,
        *,
        local_addr: bytes,
        remote_addr: bytes,
        now: float,
        isn: int,
        mtu: int = 1420,
        config: TcpConfig | None = None,
    ) -> None:
        if syn.flags & (SYN | ACK | RST) != SYN:
            raise ValueError("a connection starts from a SYN without ACK or RST")
        cfg = self.config = config or TcpConfig()
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.local_port = syn.dport
        self.remote_port = syn.sport
        self.state = PENDING
        self.reset_reason: str | None = None
        self.peer_eof = False
        # build_segment with this connection's addresses and ports bound (partial is C-fast).
        self._segment = partial(
            build_segment,
            local_addr,
            remote_addr,
            syn.dport,
            syn.sport,
            addr_sum=addresses_sum(local_addr, remote_addr),
        )
        self._timestamped = timestamped_builder(local_addr, remote_addr, syn.dport, syn.sport)
        # (RCV.NXT, window, TSval) of the segments `tx.output` is sending now: in one call they
        # are all the same, so they are worked out once (`_build`). None outside such a call.
        self._round: tuple[int, int, int] | None = None
        self._in_output = False
        self._out: list[bytes] = []
        self._events: list[TcpEvent] = []
        v6 = len(local_addr) == 16
        # RFC 9293 §3.7.1 / RFC 6691: MSS counts payload only; subtract options per segment.
        self._mss_adv = max(mtu - (60 if v6 else 40), 88)
        peer_mss = syn.mss if syn.mss else (1220 if v6 else 536)
        self._ts_ok = syn.tsval is not None
        self._ts_recent = syn.tsval or 0
        self._ts_offset = (isn * 2654435761) & _M32
        self._sack_ok = bool(syn.sack_permitted)
        self._snd_mss = max(min(peer_mss, self._mss_adv) - (12 if self._ts_ok else 0), 64)
        # Receive side. With window scaling the whole buffer can be offered; without it 64 KiB.
        self._ws_ok = syn.wscale is not None
        if self._ws_ok:
            self._snd_wscale = syn.wscale
            ws = 0
            while (cfg.recv_buffer >> ws) >= 0xFFFF:  # room for rounding up one step
                ws += 1
            self.rcv_wscale = ws
            bufsize = cfg.recv_buffer
        else:
            self._snd_wscale = self.rcv_wscale = 0
            bufsize = min(cfg.recv_buffer, 0xFFFF)
        self.irs = syn.seq
        self.rx = ReceiveSide(
            irs=syn.seq,
            bufsize=bufsize,
            wscale=self.rcv_wscale,
            mss=self._mss_adv,
            max_ooo_ranges=cfg.max_ooo_ranges,
            delayed_ack=cfg.delayed_ack,
        )
        self.iss = isn & _M32
        self.tx = SendSide(
            iss=self.iss,
            irs=self.irs,
            mss=self._snd_mss,
            snd_wnd=syn.window,  # never scaled in a SYN (RFC 7323 §2.2)
            snd_wscale=self._snd_wscale,
            sack_ok=self._sack_ok,
            config=cfg,
            now=now,
            emit=self._emit,
        )
        self._synack_retries = 0
        self._connect_deadline = now + cfg.connect_timeout
        self._time_wait_deadline = 0.0
        self._last_rcv = now
        self._last_data = now
        self._ka_probes = 0
        self._last_challenge = -1e18

    # -- queries -------------------------------------------------------------------------------

    @property
    def rcv_available(self) -> int:
        """Bytes `take_peer_data` would return."""
        return len(self.rx.buf)

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    @property
    def finished(self) -> bool:
        """Everything was delivered both ways (the peer's data read, ours acknowledged); only
        the FIN exchange or TIME-WAIT is left, so dropping the connection now loses no data."""
        tx = self.tx
        return (
            self.peer_eof
            and tx.fin_seq is not None
            and tx.snd_una >= tx.fin_seq
            and not self.rx.buf
        )

    # -- buffer sizes (the exit grants them and grows them while they limit the transfer) ------

    @property
    def buffer_sizes(self) -> tuple[int, int]:
        """(receive buffer, send buffer) bounds in effect."""
        return self.rx.bufsize, self.tx.buf.limit

    def set_buffer_sizes(self, recv: int, send: int) -> None:
        """Set the bounds before the handshake, or raise them later. The window scale was fixed
        by the SYN for `config.recv_buffer`, the most a receive buffer may grow to."""
        if not self._ws_ok:
            recv = min(recv, 0xFFFF)
        rx = self.rx
        rx.bufsize = recv
        rx.sws = min(recv // 2, rx.mss)
        self.tx.buf.limit = send

    def receive_window_used(self) -> bool:
        """The peer sent all the window we offered: the receive buffer limits its rate (unless
        the host is not reading, which the shell knows, or the queue-delay clamp is what holds
        the window back, which a bigger buffer would not change)."""
        rx = self.rx
        return rx.rcv_adv - rx.rcv_nxt < rx.sws and not rx.clamp_limits()

    def receive_queue_delay(self, delay: float, now: float) -> None:
        """The packets just received waited `delay` seconds in the device's socket queue: size
        the window this peer may keep in flight (`ReceiveSide.receive_queue_delay`) so that the
        queue stays near `config.queue_delay_target`."""
        self.rx.receive_queue_delay(delay, self.config.queue_delay_target, now)

    def send_buffer_in_flight(self) -> bool:
        """Every byte the send buffer holds has been sent: if the host has more, the buffer,
        not the congestion or peer window, is what holds it back."""
        tx = self.tx
        return tx.snd_max >= tx.buf.end

    def take_events(self) -> list[TcpEvent]:
        """Events since the last call, oldest first."""
        ev = self._events
        self._events = []
        return ev

    def __repr__(self) -> str:
        return f"<TcpConnection :{self.local_port}<-:{self.remote_port} {self.state.value}>"

    # -- the host side -------------------------------------------------------------------------

    def receive_host_connected(self, now: float) -> None:
        """The host socket connected: answer the SYN."""
        if self.state is PENDING:
            self.state = SYN_RECEIVED
            self._send_synack(now, first=True)

    def receive_host_refused(self, now: float) -> None:
        """The host refused: reset the peer's connection attempt (RFC 9293 §3.10.7.1)."""
        if self.state is PENDING:
            self._out.append(self._raw(0, self.rx.rcv_nxt, RST | ACK))
            self._finish(None)

    def receive_host_unreachable(self, now: float) -> None:
        """Give up silently (the shell answers the SYN with ICMP destination unreachable)."""
        if self.state is PENDING:
            self._finish(None)

    def host_send_space(self) -> int:
        """How many bytes the shell may read from the host socket for `receive_host_data`."""
        if self.state in _HOST_WRITABLE and self.tx.fin_seq is None:
            return self.tx.buf.space()
        return 0

    def receive_host_data(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue host bytes for the peer; returns how many were accepted (bounded buffer). They
        go out with the next `take_segments`, as the windows allow."""
        if self.state in _HOST_WRITABLE and self.tx.fin_seq is None:
            return self.tx.buf.append(data)
        return 0

    def receive_host_eof(self, now: float) -> None:
        """The host closed its sending side: FIN after the buffered data."""
        state = self.state
        if state is PENDING:
            self.receive_host_refused(now)
        elif state in _HOST_WRITABLE:
            self.tx.queue_fin()
            if state is ESTABLISHED:
                self.state = FIN_WAIT_1
            elif state is CLOSE_WAIT:
                self.state = LAST_ACK

    def receive_host_reset(self, now: float) -> None:
        """The host connection broke: abort toward the peer with RST."""
        if self.state is PENDING:
            self.receive_host_refused(now)
        elif self.state is not CLOSED:
            self._abort("host-reset", notify=False)

    def take_peer_data(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Take up to `max_bytes` of in-order peer data for the host (all of it when None)."""
        return self.rx.read(max_bytes, self.state in _RECEIVING)

    # -- the peer side -------------------------------------------------------------------------

    def receive_segment(self, seg: Segment, now: float, queued: float = 0.0) -> None:
        """Process one segment from the peer (RFC 9293 §3.10.7.4 with RFC 5961 and RFC 7323).
        `queued`: how long it waited in the device's socket queue before `now`, if known; the
        sender's standing-queue test leaves it out of RTT samples (`SendSide.ack_queued`)."""
        state = self.state
        flags = seg.flags
        if state is CLOSED:
            return
        rx = self.rx
        nxt = rx.rcv_nxt
        seq = nxt + ((seg.seq - nxt + _HALF) & _M32) - _HALF
        if state is PENDING:
            if flags & RST and seq == nxt:
                self._abort("peer-reset", send_rst=False)
            return  # retransmitted SYNs wait for the host connect
        if flags & SYN and not flags & (ACK | RST):
            if state is SYN_RECEIVED and seq == nxt - 1:
                self._send_synack(now, first=False)  # our SYN-ACK was lost
                return
            if state is TIME_WAIT and seq > nxt:
                self._finish(None)  # RFC 6191: a new incarnation; the shell opens it
                return
        payload = seg.payload
        plen = len(payload)
        tsval = seg.tsval
        ts_ok = self._ts_ok
        if (
            ts_ok
            and tsval is not None
            and not flags & RST
            and (tsval - self._ts_recent) & _M32 >= _HALF  # PAWS, RFC 7323 §5.3
        ):
            rx.ack_now = True
            return
        seg_len = plen + (flags & SYN and 1) + (flags & FIN and 1)
        if not rx.acceptable(seq, seg_len):
            if not flags & RST:
                rx.ack_now = True
                if state is TIME_WAIT and flags & FIN:
                    self._time_wait_deadline = now + self.config.time_wait
            return
        if flags & RST:
            if state is TIME_WAIT:
                pass  # RFC 1337: no TIME-WAIT assassination; the timer ends it
            elif seq == nxt:
                self._abort("peer-reset", send_rst=False)
            else:
                self._challenge_ack(now)  # RFC 5961 §3.2
            return
        if flags & SYN:
            self._challenge_ack(now)  # RFC 5961 §4.2
            return
        if not flags & ACK or state is TIME_WAIT:
            return
        tx = self.tx
        una = tx.snd_una
        ack = una + ((seg.ack - una + _HALF) & _M32) - _HALF
        if state is SYN_RECEIVED:
            if not una < ack <= tx.snd_max:
                self._out.append(self._raw(ack, 0, RST))
                return
            self.state = state = FIN_WAIT_1 if tx.fin_seq is not None else ESTABLISHED
            self._events.append(Established())
        elif ack > tx.snd_max:
            rx.ack_now = True
            return
        elif ack < una - tx.max_snd_wnd:
            self._challenge_ack(now)  # RFC 5961 §5.2
            return
        ts_rtt = None
        if ts_ok and seg.tsecr and ack > una:
            ts_rtt = ((self._tsval(now) - seg.tsecr) & _M32) / 1000.0
            if ts_rtt > 2 * tx.rtt.max_rto:
                ts_rtt = None
        blocks = None
        if seg.sack_blocks and self._sack_ok:
            blocks = [
                (
                    una + ((left - una + _HALF) & _M32) - _HALF,
                    una + ((right - una + _HALF) & _M32) - _HALF,
                )
                for left, right in seg.sack_blocks
            ]
        tx.ack_queued = queued
        tx.on_ack(ack, seq, seg.window, blocks, ts_rtt, now, seg_len == 0)
        self._last_rcv = now
        self._ka_probes = 0
        if ts_ok and tsval is not None and seq <= rx.last_ack_sent:
            self._ts_recent = tsval  # RFC 7323 §4.3
        if tx.fin_seq is not None and tx.snd_una > tx.fin_seq:  # our FIN is acknowledged
            if state is FIN_WAIT_1:
                self.state = state = FIN_WAIT_2
            elif state is CLOSING:
                self._enter_time_wait(now)
                return
            elif state is LAST_ACK:
                self._finish(None)
                return
        if state in _RECEIVING:
            if plen:
                self._last_data = now
                if rx.receive(seq, payload, now):
                    self._events.append(DataReadable())
                if rx.fin_ready():
                    self._peer_fin(now)
            if flags & FIN and rx.note_fin(seq + plen):
                self._peer_fin(now)

    def _peer_fin(self, now: float) -> None:
        self.rx.take_fin()
        self.peer_eof = True
        self._events.append(PeerEof())
        state = self.state
        if state is ESTABLISHED:
            self.state = CLOSE_WAIT
        elif state is FIN_WAIT_1:
            self.state = CLOSING
        elif state is FIN_WAIT_2:
            self._enter_time_wait(now)

    def _challenge_ack(self, now: float) -> None:
        if now - self._last_challenge >= self.config.challenge_ack_interval:
            self._last_challenge = now
            self.rx.ack_now = True

    # -- output --------------------------------------------------------------------------------

    def take_segments(self, now: float) -> list[bytes]:
        """TCP segments (header + payload, checksummed) to wrap in IP local -> remote and send."""
        state = self.state
        if state in _SENDING:
            mss = self._snd_mss
            ooo = self.rx.ooo
            if self._sack_ok and ooo:
                mss -= 4 + 8 * min(len(ooo.starts), 3 if self._ts_ok else 4)
            tx = self.tx
            if tx.snd_nxt < tx.data_end or tx.in_recovery or tx.fast_rxt:
                self._in_output = True
                try:
                    tx.output(now, mss)
                finally:
                    self._in_output = False
                    self._round = None
            else:
                tx.cwnd_limited = False  # nothing to send: the window is not what limits us
                tx.persist_deadline = None
        if self.rx.ack_now and state is not CLOSED and state is not PENDING:
            self._out.append(self._build(self.tx.snd_max, ACK, b"", now))
        out = self._out
        self._out = []
        return out

    def _emit(self, seq: int, n: int, fin: bool, now: float) -> None:
        """SendSide's callback: build the segment carrying [seq, seq+n) (+FIN)."""
        buf = self.tx.buf
        if n:
            payload = buf.get(seq, n)
            flags = ACK | PSH if seq + n == buf.end else ACK
            if seq + n > self.tx.snd_max:
                # New data only: resending the same octets (into a closed window, or to a peer
                # that no longer answers) is the retransmission timer's business, not activity.
                self._last_data = now
        else:
            payload = b""
            flags = ACK
        if fin:
            flags |= FIN
        self._out.append(self._build(seq, flags, payload, now))

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & _M32

    def _build(self, seq: int, flags: int, payload: bytes | bytearray, now: float) -> bytes:
        """A segment carrying our current ACK, window and options; it satisfies any pending ACK.

        The common shape (timestamps, no SACK blocks) goes through `timestamped_builder`; within
        one `tx.output` call the ACK, window and TSval are computed for the first segment only.
        """
        rnd = self._round
        if rnd is not None:
            return self._timestamped(seq, rnd[0], flags, rnd[1], payload, rnd[2], self._ts_recent)
        rx = self.rx
        if self._ts_ok and not (self._sack_ok and rx.ooo):
            rcv_nxt = rx.rcv_nxt
            win = rx.window_field()
            tsval = self._tsval(now)
            rx.acked(now)
            if self._in_output:
                self._round = (rcv_nxt, win, tsval)
            return self._timestamped(seq, rcv_nxt, flags, win, payload, tsval, self._ts_recent)
        rcv_nxt = rx.rcv_nxt
        win = rx.window_field()
        ts = (self._tsval(now), self._ts_recent) if self._ts_ok else None
        blocks = ()
        if self._sack_ok and rx.ooo:
            blocks = rx.ooo.sack_blocks(3 if ts else 4)
        rx.acked(now)
        return self._segment(seq, rcv_nxt, flags, win, payload, timestamps=ts, sack_blocks=blocks)

    def _raw(self, seq: int, ack: int, flags: int) -> bytes:
        """A bare segment (RSTs), no options."""
        return self._segment(seq, ack, flags, 0)

    def _send_synack(self, now: float, first: bool) -> None:
        rx = self.rx
        win = min(rx.bufsize, 0xFFFF)  # a SYN's window is never scaled
        rx.rcv_adv = max(rx.rcv_adv, rx.rcv_nxt + win)
        self._out.append(
            self._segment(
                self.iss,
                rx.rcv_nxt,
                SYN | ACK,
                win,
                mss=self._mss_adv,
                wscale=self.rcv_wscale if self._ws_ok else None,
                sack_permitted=self._sack_ok,
                timestamps=(self._tsval(now), self._ts_recent) if self._ts_ok else None,
            )
        )
        self.tx.syn_sent(now, first)

    # -- timers --------------------------------------------------------------------------------

    def _keepalive_deadline(self) -> float | None:
        cfg = self.config
        tx = self.tx
        if (
            cfg.keepalive_idle is None
            or self.state not in _KEEPALIVE
            or tx.snd_max != tx.snd_una
            or tx.persist_deadline is not None
        ):
            return None
        return self._last_rcv + cfg.keepalive_idle + self._ka_probes * cfg.keepalive_interval

    def next_timer(self) -> float | None:
        """When `handle_timer` must next be called (None: no timer is running)."""
        state = self.state
        if state is CLOSED:
            return None
        if state is PENDING:
            return self._connect_deadline
        if state is TIME_WAIT:
            return self._time_wait_deadline
        tx = self.tx
        best = tx.rto_deadline
        for d in (
            tx.persist_deadline,
            self.rx.delack_deadline,
            self._keepalive_deadline(),
            None
            if self.config.idle_timeout is None
            else self._last_data + self.config.idle_timeout,
        ):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        state = self.state
        cfg = self.config
        if state is CLOSED:
            return
        if state is PENDING:
            if now >= self._connect_deadline:
                self._abort("connect-timeout", send_rst=False)
            return
        if state is TIME_WAIT:
            if now >= self._time_wait_deadline:
                self._finish(None)
            return
        if cfg.idle_timeout is not None and now >= self._last_data + cfg.idle_timeout:
            self._abort("idle-timeout")
            return
        tx = self.tx
        if tx.rto_deadline is not None and now >= tx.rto_deadline:
            if state is SYN_RECEIVED:
                self._synack_retries += 1
                if self._synack_retries > cfg.max_synack_retransmits:
                    self._abort("handshake-timeout")
                    return
                tx.rtt.backoff += 1
                self._send_synack(now, first=False)
            elif not tx.on_rto(now):
                self._abort("retransmission-timeout")
                return
        if tx.persist_deadline is not None and now >= tx.persist_deadline:
            if not tx.on_persist(now):
                self._abort("persist-timeout")
                return
            self._out.append(self._build(tx.snd_una - 1, ACK, b"", now))  # window probe
        rx = self.rx
        if rx.delack_deadline is not None and now >= rx.delack_deadline:
            rx.ack_now = True
        ka = self._keepalive_deadline()
        if ka is not None and now >= ka:
            if self._ka_probes >= cfg.keepalive_probes:
                self._abort("keepalive-timeout")
                return
            self._ka_probes += 1
            # SEG.SEQ = SND.NXT - 1: an old sequence number the peer must answer with an ACK.
            self._out.append(self._build(tx.snd_una - 1, ACK, b"", now))

    # -- endings -------------------------------------------------------------------------------

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self._time_wait_deadline = now + self.config.time_wait
        self.rx.delack_deadline = None
        self.tx.rto_deadline = self.tx.persist_deadline = None

    def _abort(self, reason: str, *, send_rst: bool = True, notify: bool = True) -> None:
        """Abort both ways: RST to the peer (unless it sent one), ConnectionReset to the shell."""
        if send_rst and self.state is not PENDING:
            self._out.append(self._raw(self.tx.snd_max, self.rx.rcv_nxt, RST | ACK))
        self.rx.clear()
        self.tx.buf.data.clear()
        if notify:
            self._events.append(ConnectionReset(reason))
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        self.state = CLOSED
        # Nothing is sent any more: drop the sender's reference back to us, so a finished
        # connection is freed as soon as the shell lets go of it, not by the cycle collector.
        self.tx.emit = _closed_emit
        self.reset_reason = reason
        self.rx.ack_now = False
        self.rx.delack_deadline = None
        self.tx.rto_deadline = self.tx.persist_deadline = None
        self._events.append(ConnectionClosed())


def _closed_emit(seq: int, n: int, fin: bool, now: float) -> None:
    raise AssertionError("a closed connection sends nothing")
