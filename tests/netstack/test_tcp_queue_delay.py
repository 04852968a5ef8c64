"""The receive window follows the queueing delay in front of the exit (issue 14, bufferbloat).

When a peer uploads faster than the exit forwards, whatever the peer may keep in flight beyond
one pipeline's worth waits in the device's socket queue, and every other packet waits behind it.
Here the exit's TCP receiver sits behind a model of that queue: a FIFO served at a fixed rate in
batches, like the device's read loop, whose head age is fed to `receive_queue_delay` as the
device does. The peer (`SimPeer`) sends whatever window it is offered, as a rwnd-limited client
does. The queue must settle near the target without costing throughput, a peer far away must
still get a window that fills its path, and a peer with little to send must not earn a window.
"""

from __future__ import annotations

import statistics
from collections import deque

from tether.netstack.exit.core import QUEUE_DELAY_WINDOW
from tether.netstack.tcp import TcpConfig
from tether.netstack.tcp.window_rtt import WindowedMin
from tether.netstack.wire import parse_segment

from .simpeer import EXIT_ADDR, PEER_ADDR, Harness

TARGET = 0.001


def _peer_output(h: Harness) -> None:
    h.peer.output(h.now)
    for s in h.peer.out:
        h.link.send(h.now, "exit", s)
    h.peer.out.clear()


def _advance(h: Harness, also: float | None, arrive) -> None:
    """Move the clock to the next event (a packet due, a timer, or `also`), hand the packets
    then due to `arrive(to, data)` in the order they were sent, and fire the due timers."""
    link, peer, conn = h.link, h.peer, h.conn
    events = (link.next_due(), peer.deadline(), conn.next_timer(), also)
    h.now = min(t for t in events if t is not None)
    due = sorted(p for p in link.packets if p[0] <= h.now)  # (due, serial, to, data)
    if due:
        link.packets = [p for p in link.packets if p[0] > h.now]
        for _, _, to, data in due:
            arrive(to, data)
    d = conn.next_timer()
    if d is not None and d <= h.now:
        conn.handle_timer(h.now)
    d = peer.deadline()
    if d is not None and d <= h.now:
        peer.on_timer(h.now)


class Bottleneck:
    """The device's socket queue and read loop: segments toward the exit queue up and are
    served `batch` at a time at `rate` bytes/s; the ACKs a batch causes leave when it is done."""

    def __init__(self, h: Harness, rate: float, batch: int = 256, govern: bool = True) -> None:
        self.h, self.rate, self.batch, self.govern = h, rate, batch, govern
        self.queue: list[tuple[float, bytes]] = []
        self.free_at = h.now
        self.delays: list[tuple[float, float]] = []  # (time, head age) per batch
        self.served = 0  # payload bytes handed to the host
        self.judged = WindowedMin(QUEUE_DELAY_WINDOW)  # as the Exit judges the delay
        self.progress: list[tuple[float, int]] = []  # (time, served)

    def run(self, seconds: float, upload: bytes | None = None) -> None:
        h, peer, conn = self.h, self.h.peer, self.h.conn
        end = h.now + seconds
        while h.now < end:
            if upload is not None and len(peer.send_q) < (1 << 20):
                peer.write(upload)
            _peer_output(h)
            _advance(h, max(self.free_at, h.now) if self.queue else None, self._arrive)
            if self.queue and self.free_at <= h.now:
                self._serve()
            for s in conn.take_segments(h.now):
                h.link.send(h.now, "peer", s)

    def _arrive(self, to: str, data: bytes) -> None:
        if to == "peer":
            self.h.peer.receive(data, self.h.now)
        else:
            self.queue.append((self.h.now, data))

    def _serve(self) -> None:
        h, conn = self.h, self.h.conn
        batch, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        age = h.now - batch[0][0]
        self.delays.append((h.now, age))
        size = 0
        for _, data in batch:
            size += len(data)
            conn.receive_segment(parse_segment(PEER_ADDR, EXIT_ADDR, data), h.now)
        self.judged.add(age, h.now)
        if self.govern:
            conn.receive_queue_delay(self.judged.least(h.now), h.now)
        self.served += len(conn.take_peer_data())
        self.progress.append((h.now, self.served))
        busy = size / self.rate
        self.free_at = h.now + busy
        for s in conn.take_segments(h.now):  # the batch's ACK leaves when the batch is done
            h.link.send(h.now, "peer", s, extra=busy)

    def served_at(self, t: float) -> int:
        return max((n for when, n in self.progress if when <= t), default=0)

    def delay_quantile(self, since: float, q: float) -> float:
        xs = sorted(a for t, a in self.delays if t >= since)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def _established(latency: float) -> Harness:
    h = Harness(
        config=TcpConfig(queue_delay_target=TARGET),
        peer_kw={"rcv_buf": 1 << 20, "max_flight": 1 << 20},
        isns=(5000, 0x7FFFF000),
    )
    h.link.latency = latency
    h.advance(0.1)
    assert h.conn is not None and h.peer.state == "ESTABLISHED"
    return h


def _upload(rate: float, latency: float, seconds: float, govern: bool = True):
    h = _established(latency)
    b = Bottleneck(h, rate, govern=govern)
    start = h.now
    b.run(seconds, upload=bytes(64 * 1024))
    return h, b, start


def test_the_queue_settles_near_the_target_and_the_rate_is_kept() -> None:
    rate = 50e6  # about what the exit forwards on this machine, bytes/s
    h, b, start = _upload(rate, 0.0003, 2.0)
    warm = start + 0.5
    h2, b2, start2 = _upload(rate, 0.0003, 2.0, govern=False)
    print("governed p50/p90", b.delay_quantile(warm, 0.5), b.delay_quantile(warm, 0.9), b.served)
    print("ungoverned p50", b2.delay_quantile(start2 + 0.5, 0.5), b2.served)
    assert b.delay_quantile(warm, 0.9) <= 3 * TARGET
    assert statistics.median(a for t, a in b.delays if t >= warm) <= 2 * TARGET
    # Without the clamp the same peer keeps its whole window queued: the test can fail.
    assert b2.delay_quantile(start2 + 0.5, 0.5) > 4 * TARGET
    # Throughput: the bottleneck stays busy, as it does without the clamp.
    assert b2.served >= 0.9 * rate * 2.0
    assert b.served >= 0.95 * b2.served


def test_a_far_peer_still_gets_a_window_that_fills_its_path() -> None:
    # 50 ms RTT, a fast exit: no queue forms, so the window must open to the buffer's bound
    # (512 KiB) within a second or two.
    h, b, start = _upload(1e9, 0.025, 3.0)
    assert not h.conn.rx.clamp_limits()
    late = [a for t, a in b.delays if t >= start + 2.0]
    assert max(late) < TARGET
    rate = (b.served - b.served_at(start + 2.0)) / 1.0
    assert rate > 0.8 * (512 * 1024 / 0.05), rate


def test_a_peer_with_little_to_send_does_not_grow_the_clamp() -> None:
    h = _established(0.0003)
    b = Bottleneck(h, 50e6)
    for _ in range(50):  # 1 kB every 10 ms: never the whole window
        h.peer.write(bytes(1000))
        b.run(0.01)
    clamp = h.conn.rx.clamp
    assert clamp <= h.conn.rx.bufsize


def test_a_smaller_clamp_never_takes_back_an_offered_edge() -> None:
    h = _established(0.0003)
    conn = h.conn
    rx = conn.rx
    h.peer.write(bytes(200_000))
    h.advance(0.01)
    edge = rx.rcv_adv
    for _ in range(20):  # a long queue: the clamp falls to its floor
        rx.governed -= 100_000
        conn.receive_queue_delay(0.05, h.now)
    assert rx.clamp == 4 * rx.mss
    h.settle(lambda: False, 0.05)
    assert rx.rcv_adv >= edge


class PeerQueue:
    """The peer's side of a download: segments toward it wait in a drop-tail queue of `limit`
    bytes (a phone's socket buffer and its WireGuard's queues) served at `rate` bytes/s."""

    def __init__(self, h: Harness, rate: float, limit: int) -> None:
        self.h, self.rate, self.limit = h, rate, limit
        self.queue: deque[tuple[float, bytes]] = deque()
        self.size = 0
        self.free_at = h.now
        self.delays: list[tuple[float, float]] = []
        self.dropped: list[float] = []  # when each drop happened

    def run(self, seconds: float, download: bytes) -> None:
        h, peer, conn = self.h, self.h.peer, self.h.conn
        end = h.now + seconds
        while h.now < end:
            if conn.host_send_space() > 0:
                n = conn.receive_host_data(download[: conn.host_send_space()], h.now)
                h.host_sent += download[:n]
            peer.read(1 << 30)
            for s in conn.take_segments(h.now):
                h.link.send(h.now, "peer", s)
            _peer_output(h)
            _advance(h, max(self.free_at, h.now) if self.queue else None, self._arrive)
            while self.queue and self.free_at <= h.now:
                arrived, data = self.queue.popleft()
                self.size -= len(data)
                self.delays.append((h.now, h.now - arrived))
                self.free_at = max(self.free_at, h.now) + len(data) / self.rate
                peer.receive(data, h.now)

    def _arrive(self, to: str, data: bytes) -> None:
        if to == "exit":
            self.h.conn.receive_segment(parse_segment(PEER_ADDR, EXIT_ADDR, data), self.h.now)
        elif self.size + len(data) > self.limit:
            self.dropped.append(self.h.now)
        else:
            self.queue.append((self.h.now, data))
            self.size += len(data)

    def quantile(self, since: float, q: float) -> float:
        xs = sorted(a for t, a in self.delays if t >= since)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def _download(target: float, seconds: float) -> tuple[Harness, PeerQueue, float]:
    h = Harness(
        config=TcpConfig(queue_delay_target=target),
        peer_kw={"rcv_buf": 4 << 20},
        isns=(7000, 0x3FFFF000),
    )
    h.link.latency = 0.0003
    h.advance(0.1)
    q = PeerQueue(h, 20e6, 104 * 1024)
    start = h.now
    q.run(seconds, bytes(256 * 1024))
    return h, q, start


def test_a_download_does_not_keep_the_peers_queue_full() -> None:
    h, q, start = _download(TARGET, 2.0)
    h2, q2, start2 = _download(10.0, 2.0)  # a target no queue reaches: plain CUBIC
    warm = 0.7
    print("standing-queue p50/p90", q.quantile(start + warm, 0.5), q.quantile(start + warm, 0.9))
    print("cubic p50/p90", q2.quantile(start2 + warm, 0.5), q2.quantile(start2 + warm, 0.9))
    late = [t for t in q.dropped if t >= start + warm]
    late2 = [t for t in q2.dropped if t >= start2 + warm]
    print("delivered", len(h.peer.received), len(h2.peer.received), len(late), len(late2))
    # Plain CUBIC fills the peer's buffer until it overflows, again and again; the test can
    # fail. (Both overflow it once, at the end of slow start.)
    assert q2.quantile(start2 + warm, 0.5) > 3 * TARGET and late2
    assert q.quantile(start + warm, 0.9) <= 3 * TARGET
    assert not late
    assert len(h.peer.received) >= 0.95 * len(h2.peer.received)


def _exit_upload(delays) -> list[int]:
    """A peer uploads through the `Exit` in rounds 1 ms apart, each round's segments preceded
    by the queue delay the device measured; returns the window the peer saw after each."""
    from .support import FakeHost, PeerTcp, open_connection
    from .support import Harness as ExitHarness

    h = ExitHarness()
    host = FakeHost(h, auto_connect=True)
    client = PeerTcp(bytes([10, 0, 0, 2]), bytes([198, 51, 100, 7]), 40000, 80, window=0xFFFF)
    open_connection(h, host, client)
    windows = []
    packets: list[bytes] = []
    for delay in delays:
        client.send(bytes(200_000) if len(client.send_q) < 100_000 else b"")
        packets += client.output()
        h.now += 0.001
        h.x.receive_queue_delay(delay, h.now)
        for p in packets:
            h.deliver(p)
        host.run()
        packets = []
        for p in h.out():
            packets += client.receive(p)
        windows.append(client.snd_wnd)
    return windows


def test_the_exit_shrinks_windows_for_a_standing_queue_not_for_a_passing_wait() -> None:
    steady = _exit_upload([0.0] * 200)
    standing = _exit_upload([0.0] * 20 + [0.005] * 180)
    # A busy machine: the process was not scheduled for 20 ms once every 30 ms; in between
    # the queue drains.
    passing = _exit_upload([0.0] * 20 + ([0.02] + [0.0] * 29) * 6)
    assert min(steady[100:]) >= 48 * 1024
    assert max(standing[100:]) <= 16 * 1024
    assert min(passing[100:]) >= 0.75 * min(steady[100:])


def test_a_timeout_after_reported_holes_is_not_taken_for_spurious() -> None:
    """A small drop-tail queue in front of the peer drops resent segments too, so recovery
    ends in a timeout; the first ACK after it then covers octets the peer had SACKed before.
    That is no sign that nothing was lost: undoing the timeout there left the holes unsent
    until the next (backed-off) timeout, and the flow stalled for minutes."""
    h = Harness(
        config=TcpConfig(queue_delay_target=10.0),  # plain CUBIC: it overflows the queue
        peer_kw={"rcv_buf": 4 << 20},
        isns=(9000, 0x5FFFF000),
    )
    h.link.latency = 0.0003
    h.advance(0.1)
    q = PeerQueue(h, 20e6, 104 * 1024)  # slow start overflows it by far: recovery times out
    q.run(1.5, bytes(256 * 1024))
    tx = h.conn.tx
    assert q.dropped and tx.timeouts
    assert tx.spurious_timeouts == 0
    assert len(h.peer.received) >= 0.6 * 20e6 * 1.5


def test_window_rtt_times_the_data_an_update_let_in() -> None:
    from tether.netstack.tcp.window_rtt import WindowRtt

    w = WindowRtt(1000)
    w.window_sent(5000, 10.000)  # the peer may send [1000, 5000)
    w.data_arrived(1000, 2000, 10.001)  # the first octets it let in: 1 ms
    assert w.take_waited() and abs(w.base.value - 0.001) < 1e-9
    w.data_arrived(2000, 3000, 10.0012)  # the rest of the same window: no second sample
    assert not w.take_waited()
    w.window_sent(9000, 10.002)
    w.data_arrived(5000, 6000, 10.0045)  # starts at the edge the update moved: 2.5 ms
    assert w.take_waited()
    assert abs(w.excess(10.0045) - 0.0) < 1e-9  # judged on the least of the last 10 ms
    assert abs(w.excess(10.0115) - 0.0015) < 1e-9  # once the 1 ms sample has aged out
    assert w.excess(10.05) == 0.0  # nothing recent: no judgement
    # A segment that runs across an edge was sent without waiting for it: no sample.
    w.window_sent(13000, 10.050)
    w.window_sent(17000, 10.051)
    w.data_arrived(12500, 13500, 10.060)
    assert not w.take_waited() and w.excess(10.060) == 0.0


class BackloggedExit(PeerQueue):
    """A download whose ACKs reach the exit `backlog` seconds late, all of them: the exit's own
    socket queue (a busy process), which the device measures and reports with each batch."""

    def __init__(self, h: Harness, backlog: float, credit: bool) -> None:
        super().__init__(h, 200e6, 1 << 30)
        self.backlog, self.credit = backlog, credit

    def _arrive(self, to: str, data: bytes) -> None:
        if to != "exit":
            super()._arrive(to, data)
        elif self.backlog and not isinstance(data, _Late):  # into the exit's socket queue
            self.h.link.send(self.h.now, "exit", _Late(data), extra=self.backlog - LATENCY)
        else:
            queued = self.backlog if self.credit and isinstance(data, _Late) else 0.0
            seg = parse_segment(PEER_ADDR, EXIT_ADDR, data)
            self.h.conn.receive_segment(seg, self.h.now, queued)


class _Late(bytes):
    """A datagram that has waited in the exit's socket queue."""


LATENCY = 0.0003


def test_the_exits_own_backlog_is_not_taken_for_a_queue_toward_the_peer() -> None:
    """A busy exit: every RTT sample grows by the time ACKs wait in the exit's own socket, which
    no window toward the peer causes or cures. Left out (as the device reports it with each
    batch), that wait costs the sender no window; counted, it costs window and throughput."""

    def run(backlog: float, credit: bool) -> tuple[int, int]:
        h = Harness(
            config=TcpConfig(queue_delay_target=TARGET),
            peer_kw={"rcv_buf": 4 << 20},
            isns=(11000, 0x6FFFF000),
        )
        h.link.latency = LATENCY
        h.advance(0.1)
        q = BackloggedExit(h, 0.0, credit)
        q.run(0.1, bytes(256 * 1024))  # the base RTT, learnt while the exit is idle
        before, got = h.conn.tx.queue_reductions, len(h.peer.received)
        q.backlog = backlog
        q.run(0.3, bytes(256 * 1024))
        return h.conn.tx.queue_reductions - before, len(h.peer.received) - got

    idle = run(0.0, False)
    counted = run(0.004, False)
    credited = run(0.004, True)
    assert counted[0] > 2 * max(idle[0], 1)  # the test can fail
    assert credited[0] <= idle[0]
    assert credited[1] > 1.3 * counted[1]
