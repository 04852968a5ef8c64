"""A simulated peer TCP, a fake link and a harness around one TcpConnection.

`SimPeer` is written separately from the code under test and on purpose differently: 32-bit
modular sequence arithmetic (the connection unwraps to absolute numbers), go-back-N retransmission
with a fixed backed-off RTO, no congestion control, RFC 9293-style one-byte zero-window probes,
an ACK for every segment (or, with `delack`, only from a delayed-ACK timer, as a stack that never
ACKs every second segment), SACK blocks from a dict of out-of-order segments. It also acts as a
checker: every segment the connection sends must be well-formed and must carry exactly the bytes
the host wrote at that stream offset, inside the window the peer offered.

`test_tcp_stateful.py` drives the harness, with hypothesis and in fixed bulk scenarios;
`test_tcp_simpeer.py` checks the checker.
"""

from __future__ import annotations

import random

from tether.netstack.tcp import ConnectionReset, State, TcpConfig, TcpConnection
from tether.netstack.wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    build_reset_reply,
    build_segment,
    parse_segment,
)

M = 0xFFFFFFFF
PEER_ADDR = bytes([192, 168, 90, 2])
EXIT_ADDR = bytes([203, 0, 113, 9])
PEER_PORT = 40000
EXIT_PORT = 443


def lt(a: int, b: int) -> bool:
    return a != b and ((b - a) & M) < 0x80000000


def le(a: int, b: int) -> bool:
    return ((b - a) & M) < 0x80000000


class SimPeer:
    """A small active-open TCP endpoint (the phone). Raises AssertionError on protocol abuse."""

    def __init__(
        self,
        *,
        now: float,
        isn: int,
        host_stream: bytearray,
        mss: int = 1380,
        wscale: int | None = 7,
        sack: bool = True,
        ts: bool = True,
        rcv_buf: int = 65536,
        time_wait: float = 120.0,
        delack: float | None = None,
        max_flight: int = 256 * 1024,
    ) -> None:
        self.state = "SYN_SENT"
        self.iss = isn & M
        self.snd_una = self.iss
        self.snd_nxt = self.snd_max = (self.iss + 1) & M
        self.snd_wnd = 0
        self.wl1 = self.wl2 = 0
        self.send_q = bytearray()  # app bytes from snd_una (once the SYN is acked) on
        self.fin_queued = False
        self.fin_seq: int | None = None
        self.rcv_nxt = 0
        self.ooo: dict[int, bytes] = {}
        self.recent: list[int] = []
        self.app_in = bytearray()  # delivered, not yet read by the app
        self.received = bytearray()  # everything delivered in order (the checker's record)
        self.rcv_buf = rcv_buf
        self.adv_edge = 0
        self.mss, self.wscale, self.sack, self.ts = mss, wscale, sack, ts
        self.ws_ok = self.sack_ok = self.ts_ok = False
        self.snd_ws = self.rcv_ws = 0
        self.peer_mss = 536
        self.ts_recent = 0
        self.data_base = 0
        self.last_heard = now
        self.ka_sent = 0
        self.rto = 1.0
        self.rto_at: float | None = now + self.rto
        self.retries = 0
        self.tw = time_wait
        # Delayed ACK (RFC 9293 §3.8.6.3): in-order data is acknowledged only when this timer,
        # started by the first unacknowledged segment, fires; anything else is ACKed at once.
        self.delack = delack
        self.max_flight = max_flight  # the most it keeps in flight, whatever the window
        self.delack_at: float | None = None
        self.last_ack_sent = 0  # RFC 7323 §4.3 Last.ACK.sent: decides what TS.Recent holds
        self.tw_at: float | None = None
        self.peer_eof = False
        self.reset = False
        self.host_stream = host_stream
        self.out: list[bytes] = [self._syn(now)]
        self.now = now

    # -- building ----------------------------------------------------------------------------

    def _tsval(self, now: float) -> int:
        return int(now * 1000 + 777) & M

    def _window(self) -> int:
        free = max(self.rcv_buf - len(self.app_in), 0)
        win = min(free >> self.rcv_ws, 0xFFFF)
        edge = (self.rcv_nxt + (win << self.rcv_ws)) & M
        if lt(self.adv_edge, edge):
            self.adv_edge = edge
        return win

    def _syn(self, now: float) -> bytes:
        return build_segment(
            PEER_ADDR,
            EXIT_ADDR,
            PEER_PORT,
            EXIT_PORT,
            self.iss,
            0,
            SYN,
            min(self.rcv_buf, 0xFFFF),
            mss=self.mss,
            wscale=self.wscale,
            sack_permitted=self.sack,
            timestamps=(self._tsval(now), 0) if self.ts else None,
        )

    def _seg(self, seq: int, flags: int, payload: bytes = b"", sack: bool = False) -> bytes:
        blocks = []
        if sack and self.sack_ok:
            ranges = self._ooo_ranges()
            for s in self.recent:
                for r in ranges:
                    if le(r[0], s) and lt(s, r[1]) and r not in blocks:
                        blocks.append(r)
            blocks += [r for r in ranges if r not in blocks]
            blocks = blocks[: 3 if self.ts_ok else 4]
        self.last_ack_sent = self.rcv_nxt
        self.delack_at = None  # whatever carries the ACK satisfies a delayed one
        return build_segment(
            PEER_ADDR,
            EXIT_ADDR,
            PEER_PORT,
            EXIT_PORT,
            seq,
            self.rcv_nxt,
            flags,
            self._window(),
            payload,
            timestamps=(self._tsval(self.now), self.ts_recent) if self.ts_ok else None,
            sack_blocks=blocks,
        )

    def _ooo_ranges(self) -> list[tuple[int, int]]:
        ranges: list[list[int]] = []
        for s in sorted(self.ooo, key=lambda s: (s - self.rcv_nxt) & M):
            e = (s + len(self.ooo[s])) & M
            if ranges and le(s, ranges[-1][1]):
                if lt(ranges[-1][1], e):
                    ranges[-1][1] = e
            else:
                ranges.append([s, e])
        return [(a, b) for a, b in ranges]

    def _ack(self, sack: bool = True) -> None:
        self.out.append(self._seg(self.snd_nxt, ACK, sack=sack))

    # -- the application ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert not self.fin_queued
        self.send_q += data

    def read(self, n: int) -> bytes:
        data = bytes(self.app_in[:n])
        del self.app_in[:n]
        old = self.adv_edge
        if data and self.state not in ("SYN_SENT", "CLOSED"):
            self._window()
            if self.adv_edge != old:
                if self.delack is None:
                    self._ack()
                elif self.delack_at is None:
                    self.delack_at = self.now + self.delack  # the update rides on it
        return data

    def close(self) -> None:
        if self.fin_queued or self.state in ("CLOSED", "SYN_SENT"):
            return
        self.fin_queued = True
        self.state = {"ESTABLISHED": "FIN_WAIT_1", "CLOSE_WAIT": "LAST_ACK"}[self.state]

    def abort(self) -> None:
        if self.state not in ("CLOSED", "SYN_SENT"):
            self.out.append(self._seg(self.snd_nxt, RST | ACK))
        self._closed(reset=True)

    def _closed(self, reset: bool = False) -> None:
        self.state = "CLOSED"
        self.reset = self.reset or reset
        self.rto_at = self.tw_at = None

    # -- timers ------------------------------------------------------------------------------

    def _keepalive_at(self) -> float | None:
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_2") or self.rto_at:
            return None
        return self.last_heard + 60.0 + 10.0 * self.ka_sent

    def deadline(self) -> float | None:
        ds = [
            d
            for d in (self.rto_at, self.tw_at, self._keepalive_at(), self.delack_at)
            if d is not None
        ]
        return min(ds) if ds else None

    def on_timer(self, now: float) -> None:
        self.now = now
        if self.tw_at is not None and now >= self.tw_at:
            self._closed()
            return
        ka = self._keepalive_at()
        if ka is not None and now >= ka:
            # Keep-alive (RFC 1122 §4.2.3.6), so FIN-WAIT-2 cannot outlive a vanished exit.
            self.ka_sent += 1
            if self.ka_sent > 8:
                self.abort()
                return
            self.out.append(self._seg((self.snd_nxt - 1) & M, ACK))
        if self.delack_at is not None and now >= self.delack_at:
            self._ack()
        if self.rto_at is None or now < self.rto_at:
            return
        self.retries += 1
        if self.retries > 15:
            self.abort()
            return
        self.rto = min(self.rto * 2, 60.0)
        self.rto_at = now + self.rto
        if self.state == "SYN_SENT":
            self.out.append(self._syn(now))
        elif self.snd_nxt != self.snd_una:
            self.snd_nxt = self.snd_una  # go-back-N; the FIN goes again after the data
            self.output(now)
        elif self.send_q and self.snd_wnd == 0:
            # RFC 9293 §3.8.6.1: probe a zero window with one byte beyond it. After a go-back-N
            # that byte may have been sent before, with more behind it: SND.MAX never goes back,
            # or the receiver's ACK of those later bytes would look like an ACK of unsent data.
            self.out.append(self._seg(self.snd_nxt, ACK, bytes(self.send_q[:1])))
            self.snd_nxt = (self.snd_nxt + 1) & M
            if lt(self.snd_max, self.snd_nxt):
                self.snd_max = self.snd_nxt
        else:
            self.rto_at = None

    # -- sending -----------------------------------------------------------------------------

    def output(self, now: float) -> None:
        self.now = now
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "CLOSING", "LAST_ACK"):
            return
        seg_mss = min(self.peer_mss, self.mss) - (12 if self.ts_ok else 0)
        while True:
            off = (self.snd_nxt - self.snd_una) & M
            limit = min(self.snd_wnd, self.max_flight)
            if off < len(self.send_q):
                n = min(seg_mss, len(self.send_q) - off, limit - off)
                if n <= 0:
                    break
                payload = bytes(self.send_q[off : off + n])
                self.out.append(self._seg(self.snd_nxt, ACK | PSH, payload))
                self.snd_nxt = (self.snd_nxt + n) & M
            elif (
                self.fin_queued
                and off == len(self.send_q)
                and (self.fin_seq is None or self.fin_seq == self.snd_nxt)
            ):
                # The FIN's place is fixed once sent: an ACK beyond it (even one that arrives
                # after a go-back-N) acknowledges it, and it never goes out anywhere else.
                self.fin_seq = self.snd_nxt
                self.out.append(self._seg(self.snd_nxt, ACK | FIN))
                self.snd_nxt = (self.snd_nxt + 1) & M
            else:
                break
            if lt(self.snd_max, self.snd_nxt):
                self.snd_max = self.snd_nxt
            if self.rto_at is None:
                self.rto_at = now + self.rto
        if self.rto_at is None and self.send_q and self.snd_wnd == 0:
            self.rto_at = now + self.rto  # persist

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        self.now = now
        seg = parse_segment(EXIT_ADDR, PEER_ADDR, data)  # checksum must be right
        assert (seg.sport, seg.dport) == (EXIT_PORT, PEER_PORT)
        flags = seg.flags
        if self.state == "CLOSED":
            if not flags & RST:
                self.out.append(build_reset_reply(PEER_ADDR, EXIT_ADDR, seg))
            return
        if self.state == "SYN_SENT":
            self._syn_sent(seg, now)
            return
        if flags & SYN:  # a retransmitted SYN-ACK: our ACK of it was lost
            assert not flags & RST and seg.ack == (self.iss + 1) & M
            self._ack(sack=False)
            return
        self._check_options(seg)
        if flags & RST:
            if self.state == "TIME_WAIT":
                return  # RFC 1337
            wnd = max(self.rcv_buf - len(self.app_in), 1)
            if le(self.rcv_nxt, seg.seq) and lt(seg.seq, (self.rcv_nxt + wnd) & M):
                self._closed(reset=True)
            return
        assert flags & ACK
        self.last_heard = now
        self.ka_sent = 0
        self._check_data(seg)
        self._process_ack(seg, now)
        if self.state == "CLOSED":
            return
        plen = len(seg.payload)
        if plen or flags & FIN:
            in_order = seg.seq == self.rcv_nxt and not flags & FIN
            self._process_text(seg)
            if self.delack is None or not in_order:
                self._ack()
            elif self.delack_at is None:
                self.delack_at = now + self.delack
        elif not self._acceptable(seg.seq):
            self._ack()  # an unacceptable segment (keep-alive or window probe) gets an ACK
        self.output(now)

    def _acceptable(self, seq: int) -> bool:
        wnd = (self.adv_edge - self.rcv_nxt) & M
        if wnd >= 0x80000000 or wnd == 0:
            return seq == self.rcv_nxt
        return le(self.rcv_nxt, seq) and lt(seq, (self.rcv_nxt + wnd) & M)

    def _syn_sent(self, seg, now: float) -> None:
        flags = seg.flags
        if flags & ACK and seg.ack != (self.iss + 1) & M:
            if not flags & RST:
                self.out.append(build_reset_reply(PEER_ADDR, EXIT_ADDR, seg))
            return
        if flags & RST:
            if flags & ACK:
                self._closed(reset=True)
            return
        if not flags & SYN or not flags & ACK:
            return
        assert seg.mss is not None
        assert (seg.wscale is not None) == (self.wscale is not None)
        assert seg.sack_permitted == self.sack
        assert (seg.tsval is not None) == self.ts
        assert not seg.payload
        self.ws_ok = seg.wscale is not None and self.wscale is not None
        self.snd_ws = seg.wscale if self.ws_ok else 0
        self.rcv_ws = self.wscale if self.ws_ok else 0
        self.sack_ok = self.sack and seg.sack_permitted
        self.ts_ok = self.ts and seg.tsval is not None
        if self.ts_ok:
            self.ts_recent = seg.tsval
        self.peer_mss = seg.mss
        self.rcv_nxt = self.data_base = (seg.seq + 1) & M
        self.snd_una = (self.iss + 1) & M
        self.snd_wnd = seg.window
        self.wl1, self.wl2 = seg.seq, seg.ack
        self.state = "ESTABLISHED"
        self.retries = 0
        self.rto_at = None
        self._ack(sack=False)
        self.output(now)

    def _check_options(self, seg) -> None:
        assert seg.mss is None and seg.wscale is None and not seg.sack_permitted
        if self.ts_ok and not seg.flags & RST:
            assert seg.tsval is not None, "timestamps negotiated: every segment carries them"
        elif not self.ts_ok:
            assert seg.tsval is None
        if not self.sack_ok:
            assert not seg.sack_blocks
        for left, right in seg.sack_blocks:
            assert lt(seg.ack, left) and lt(left, right), "SACK block must lie above the ACK"
            assert le(right, self.snd_max), "SACK of data never sent"
        if seg.flags & ACK:
            assert le(seg.ack, self.snd_max), "ACK of data never sent"

    def _check_data(self, seg) -> None:
        plen = len(seg.payload)
        if not plen:
            return
        off = (seg.seq - self.data_base) & M
        assert off + plen <= len(self.host_stream), "data the host never wrote"
        assert bytes(seg.payload) == bytes(self.host_stream[off : off + plen]), "corrupted data"
        assert le((seg.seq + plen) & M, self.adv_edge), "sent beyond the offered window"

    def _process_ack(self, seg, now: float) -> None:
        ack = seg.ack
        if lt(self.snd_una, ack) and le(ack, self.snd_max):
            acked = (ack - self.snd_una) & M
            if self.fin_seq is not None and lt(self.fin_seq, ack):
                acked -= 1
            del self.send_q[:acked]
            self.snd_una = ack
            if lt(self.snd_nxt, ack):
                self.snd_nxt = ack
            self.retries = 0
            self.rto = 1.0
            self.rto_at = None if ack == self.snd_max else now + self.rto
        if le(self.snd_una, ack) and (
            lt(self.wl1, seg.seq) or (self.wl1 == seg.seq and le(self.wl2, ack))
        ):
            self.snd_wnd = seg.window << self.snd_ws
            self.wl1, self.wl2 = seg.seq, ack
        # RFC 7323 §4.3: SEG.SEQ <= Last.ACK.sent, so a delayed ACK echoes the TSval of the
        # first segment it covers (the one that waited longest).
        if self.ts_ok and seg.tsval is not None and le(seg.seq, self.last_ack_sent):
            self.ts_recent = seg.tsval
        self.retries = 0 if le(self.snd_una, ack) else self.retries
        fin_acked = self.fin_seq is not None and lt(self.fin_seq, self.snd_una)
        if fin_acked:
            if self.state == "FIN_WAIT_1":
                self.state = "FIN_WAIT_2"
            elif self.state == "CLOSING":
                self.state = "TIME_WAIT"
                self.tw_at = now + self.tw
            elif self.state == "LAST_ACK":
                self._closed()

    def _process_text(self, seg) -> None:
        if self.state not in ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2"):
            return
        seq = seg.seq
        payload = bytes(seg.payload)
        fin = bool(seg.flags & FIN)
        off = (seq - self.rcv_nxt) & M
        if off >= 0x80000000:  # starts before rcv_nxt: trim the old part
            cut = (self.rcv_nxt - seq) & M
            if cut > len(payload):
                return
            payload, seq = payload[cut:], self.rcv_nxt
            off = 0
        room = self.rcv_buf - len(self.app_in)
        if off + len(payload) > room:
            payload = payload[: max(room - off, 0)]
            fin = False
        if off:
            if payload and len(self.ooo) < 512:
                self.ooo[seq] = payload
                self.recent.insert(0, seq)
                del self.recent[4:]
            if fin:
                self.ooo[(seq + len(payload)) & M] = b""  # FIN marker
            return
        self._deliver(payload)
        while True:
            hit = [s for s in self.ooo if le(s, self.rcv_nxt)]
            if not hit:
                break
            for s in hit:
                data = self.ooo.pop(s)
                if s == self.rcv_nxt and not data and not fin:
                    fin = True
                    seq = None  # FIN position reached via the queue
                    continue
                cut = (self.rcv_nxt - s) & M
                if cut < len(data):
                    self._deliver(data[cut:])
        if fin and (seq is None or (seq + len(payload)) & M == self.rcv_nxt):
            self.rcv_nxt = (self.rcv_nxt + 1) & M
            self.peer_eof = True
            self.ooo.clear()
            if self.state == "ESTABLISHED":
                self.state = "CLOSE_WAIT"
            elif self.state == "FIN_WAIT_1":
                self.state = "CLOSING"
            elif self.state == "FIN_WAIT_2":
                self.state = "TIME_WAIT"
                self.tw_at = self.now + self.tw

    def _deliver(self, data: bytes) -> None:
        room = self.rcv_buf - len(self.app_in)
        data = data[:room]
        self.app_in += data
        self.received += data
        self.rcv_nxt = (self.rcv_nxt + len(data)) & M


class Link:
    """Packets in flight each way, with a delivery time; the test can drop, duplicate, reorder."""

    def __init__(self, latency: float = 0.02) -> None:
        self.latency = latency
        self.packets: list[tuple[float, int, str, bytes]] = []  # (due, serial, to, data)
        self.serial = 0
        self.dropped = 0  # by the test's explicit `drop` rule
        self.loss = self.dup = self.jitter = 0.0  # random "weather", set by a rule
        self.worst_loss = 0.0
        self.rng = random.Random(0)

    def send(self, now: float, to: str, data: bytes, extra: float = 0.0) -> None:
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            return
        copies = 2 if self.dup and rng.random() < self.dup else 1
        for _ in range(copies):
            self.serial += 1
            delay = self.latency + extra + (rng.random() * self.jitter if self.jitter else 0.0)
            self.packets.append((now + delay, self.serial, to, data))

    def next_due(self) -> float | None:
        return min(p[0] for p in self.packets) if self.packets else None


class Harness:
    """The shell around one connection: creates it from the SYN, shuttles packets and events."""

    def __init__(self, *, config: TcpConfig, peer_kw: dict, isns: tuple[int, int]) -> None:
        self.now = 1000.0
        self.config = config
        self.link = Link()
        self.host_sent = bytearray()  # what the host wrote and the connection accepted
        self.host_received = bytearray()
        self.peer_sent = bytearray()
        self.peer = SimPeer(now=self.now, isn=isns[0], host_stream=self.host_sent, **peer_kw)
        self.conn_isn = isns[1]
        self.conn: TcpConnection | None = None
        self.events: list = []
        self.host_eof_sent = False
        self.peer_closed = False
        self.resets_requested = False
        self.last_tsval: int | None = None
        self.last_edge: int | None = None
        self.pump()

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            if self.conn is not None:
                for s in self.conn.take_segments(self.now):
                    self.check_sent(s)
                    self.link.send(self.now, "peer", s)
                    moved = True
                self.events += self.conn.take_events()
            self.peer.output(self.now)
            for s in self.peer.out:
                self.link.send(self.now, "exit", s)
                moved = True
            self.peer.out.clear()
            if not moved:
                return
        raise AssertionError("output never settles")

    def deliver(self, index: int) -> None:
        _, _, to, data = self.link.packets.pop(index)
        if to == "peer":
            self.peer.receive(data, self.now)
            return
        seg = parse_segment(PEER_ADDR, EXIT_ADDR, data)
        if self.conn is None:
            if seg.flags & (SYN | ACK | RST) == SYN:
                self.conn = TcpConnection(
                    seg,
                    local_addr=EXIT_ADDR,
                    remote_addr=PEER_ADDR,
                    now=self.now,
                    isn=self.conn_isn,
                    config=self.config,
                )
                self.conn.receive_host_connected(self.now)
            return
        if self.conn.state is State.CLOSED:
            reply = build_reset_reply(EXIT_ADDR, PEER_ADDR, seg)
            if reply:
                self.link.send(self.now, "peer", reply)
            return
        self.conn.receive_segment(seg, self.now)

    def advance(self, dt: float) -> None:
        """Run the clock forward, delivering due packets and firing timers in time order."""
        target = self.now + dt
        while True:
            cands = [self.link.next_due(), self.peer.deadline()]
            if self.conn is not None:
                cands.append(self.conn.next_timer())
            cands = [c for c in cands if c is not None]
            t = min(cands) if cands else None
            if t is None or t > target:
                break
            self.now = max(self.now, t)
            due = [i for i, p in enumerate(self.link.packets) if p[0] <= self.now]
            if due:
                self.deliver(min(due, key=lambda i: self.link.packets[i][:2]))
            else:
                if self.conn is not None:
                    d = self.conn.next_timer()
                    if d is not None and d <= self.now:
                        self.conn.handle_timer(self.now)
                d = self.peer.deadline()
                if d is not None and d <= self.now:
                    self.peer.on_timer(self.now)
            self.pump()
        self.now = max(self.now, target)

    def step(self) -> bool:
        """Advance to the next packet arrival or timer, whatever it is; False if none."""
        cands = [self.link.next_due(), self.peer.deadline()]
        if self.conn is not None:
            cands.append(self.conn.next_timer())
        cands = [c for c in cands if c is not None]
        if not cands:
            return False
        self.advance(max(min(cands) - self.now, 0.0))
        return True

    def settle(self, cond, limit: float) -> None:
        """Both applications read everything; run events until `cond()` or `limit` seconds."""
        end = self.now + limit
        while self.now < end:
            if self.conn is not None:
                self.host_received += self.conn.take_peer_data()
            self.peer.read(1 << 30)
            self.pump()
            if cond() or not self.step():
                break

    def check_sent(self, data: bytes) -> None:
        """Checks on the connection's output in the order it was sent (the link reorders)."""
        seg = parse_segment(EXIT_ADDR, PEER_ADDR, data)
        if seg.flags & RST:
            return
        if seg.tsval is not None:
            assert self.last_tsval is None or le(self.last_tsval, seg.tsval), "TSval went back"
            self.last_tsval = seg.tsval
        if seg.flags & SYN:
            return
        edge = (seg.ack + (seg.window << self.conn.rcv_wscale)) & M
        if self.last_edge is not None:
            # Never left, except by less than one scale step (RFC 7323 §2.4 rounding).
            slack = (1 << self.conn.rcv_wscale) - 1
            assert le(self.last_edge, (edge + slack) & M), "the offered window's edge moved left"
        if self.last_edge is None or lt(self.last_edge, edge):
            self.last_edge = edge

    @property
    def reset_seen(self) -> bool:
        return (
            any(isinstance(e, ConnectionReset) for e in self.events)
            or self.peer.reset
            or (self.conn is not None and self.conn.reset_reason is not None)
        )
