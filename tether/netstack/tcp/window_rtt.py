"""The round trip of the receive window, as the receiver sees it: how long after a window
update the data it allowed arrives.

A peer that uploads as fast as the window lets it keeps the whole window in flight, and what
is in flight but not on the wire waits in queues: the exit's socket queue, which the device
measures directly, and the peer's own (its WireGuard's encryption queue, its interface
queue), which nobody on our side can see — except as time. The data that a window update
opened is sent the moment the update arrives (when the peer was waiting for window), so the
time from sending the update to receiving the first octet it allowed is the loop's RTT; its
excess over the least RTT seen is the queue the window built, wherever it stands. Timestamps
(RFC 7323) would give the same with 1 ms resolution; the queues here are a few ms, so the
receiver times its own window updates instead (as Linux's rcv_rtt does without timestamps).

Samples are taken only for data that starts at or beyond the edge the previous update gave
(data sent because of the update, not data the peer had been free to send before); the
excess is judged on the least sample of the last `WINDOW` seconds, so that one late
scheduling of a busy host is not taken for a queue; the base is the least sample of the last
5-10 s (two buckets), so that a path that changed is learnt again.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BaseRtt", "WindowRtt", "WindowedMin"]


class WindowedMin:
    """The least of the values added in the last `horizon` seconds (a monotonic deque: O(1)
    amortised). A queue's delay is judged by its minimum over an interval, as CoDel does: a
    queue that stands shows in every sample, a passing wait (a host that was busy) in a few."""

    __slots__ = ("horizon", "values")

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.values: deque[tuple[float, float]] = deque()  # (time, value), values rising

    def add(self, value: float, now: float) -> None:
        values = self.values
        while values and values[-1][1] >= value:
            values.pop()
        values.append((now, value))

    def least(self, now: float, horizon: float | None = None) -> float | None:
        """The least value of the last `horizon` (default: the set one) seconds, or None."""
        values = self.values
        edge = now - (self.horizon if horizon is None else horizon)
        while values and values[0][0] < edge:
            values.popleft()
        return values[0][1] if values else None


class BaseRtt:
    """A path's base RTT: the least sample of the last 5-10 seconds (the current bucket and the
    previous one), so that a path that changed (the peer roamed) is learnt again within ten
    seconds, at O(1) per sample. None before the first sample."""

    __slots__ = ("value", "bucket", "bucket_start")

    BUCKET = 5.0

    def __init__(self) -> None:
        self.value: float | None = None
        self.bucket: float | None = None
        self.bucket_start = 0.0

    def sample(self, rtt: float, now: float) -> None:
        if self.bucket is None or now - self.bucket_start > self.BUCKET:
            self.value = rtt if self.bucket is None else min(self.bucket, rtt)
            self.bucket, self.bucket_start = rtt, now
        elif rtt < self.bucket:
            self.bucket = rtt
        if rtt < self.value:
            self.value = rtt


class WindowRtt:
    """Times window updates against the data they let in."""

    __slots__ = ("edges", "prev_edge", "recent", "base", "waited")

    WINDOW = 0.01  # seconds (or two base RTTs) over which the excess is judged: its least sample
    MAX_EDGES = 64  # window updates remembered; older ones are given up

    def __init__(self, edge: int) -> None:
        self.edges: deque[list] = deque()  # [edge, time sent or None once sampled], rising
        self.prev_edge = edge  # the edge of the newest update whose window was used
        self.recent = WindowedMin(self.WINDOW)
        self.base = BaseRtt()
        # The peer sent data the moment an update allowed it, since this was last cleared: it
        # was waiting for window (the window, not the peer's data or its cwnd, is the limit).
        self.waited = False

    def window_sent(self, edge: int, now: float) -> None:
        """A segment advertising right edge `edge` (RCV.NXT + RCV.WND) leaves now."""
        edges = self.edges
        if edge > (edges[-1][0] if edges else self.prev_edge):
            if len(edges) >= self.MAX_EDGES:
                self.prev_edge = edges.popleft()[0]
            edges.append([edge, now])

    def data_arrived(self, seq: int, end: int, now: float) -> None:
        """Octets [seq, end) arrived now."""
        edges = self.edges
        prev = self.prev_edge
        while edges and edges[0][0] < end:
            prev = edges.popleft()[0]
        self.prev_edge = prev
        if not edges or seq < prev:
            return
        entry = edges[0]
        sent = entry[1]
        if sent is None:
            return
        entry[1] = None  # one sample per update: the first octets it let in
        self.waited = True
        self._sample(now - sent, now)

    def take_waited(self) -> bool:
        """Whether the peer waited for window since the last call (see `waited`)."""
        waited, self.waited = self.waited, False
        return waited

    def _sample(self, rtt: float, now: float) -> None:
        if rtt < 0:
            return
        self.base.sample(rtt, now)
        self.recent.add(rtt, now)

    def excess(self, now: float) -> float:
        """The least RTT of the last `WINDOW` seconds above the base: the standing queue the
        window keeps, in seconds (0 when there is no recent sample)."""
        # Several samples, however long the RTT: the window spans two base RTTs at least.
        base = self.base.value
        least = self.recent.least(now, max(self.WINDOW, 2 * (base or 0.0)))
        if least is None or base is None:
            return 0.0
        return least - base
