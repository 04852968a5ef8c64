"""RTT estimation (RFC 6298) and congestion control: NewReno (RFC 5681) and CUBIC (RFC 9438).

CUBIC is the default. The exit sends mostly downloads to phones over WireGuard: long, variable
RTTs and losses that are not always congestion. CUBIC's window growth depends on time since the
last reduction rather than on ACK clocking, so it refills a high-BDP path in far fewer RTTs than
Reno's one segment per RTT, and its gentler reduction (beta 0.7 instead of 0.5) costs less per
random loss. It is also what the phones' own stacks (Linux/Android, Darwin) use, so flows compete
fairly. NewReno stays available (and is the base class) because it is the reference every RFC
describes and the simplest to reason about in tests.

Windows are in bytes. The loss-recovery *mechanics* (which segment to resend, pipe) live in
`sender`; these classes only decide how big cwnd and ssthresh are.
"""

from __future__ import annotations

from tether.netstack.tcp.window_rtt import BaseRtt

__all__ = ["Cubic", "NewReno", "RttEstimator", "StandingQueue", "make_congestion_control"]


class RttEstimator:
    """SRTT, RTTVAR and RTO per RFC 6298 §2, with Karn's exponential backoff (§5.5-5.7).

    The floor `min_rto` (Linux's 200 ms, not RFC 6298's conservative 1 s: on a WireGuard path a
    lost segment is common and waiting a full second for each tail loss wastes most of a short
    transfer) applies to the variance term, as in Linux: RTO = SRTT + max(G, K*RTTVAR, min_rto).
    A floor on the whole RTO, as RFC 6298 (2.4) words it, would put the timeout at SRTT + a few
    ms once the variance settles, and a peer that delays its ACKs (RFC 9293 §3.8.6.3 allows up
    to 500 ms; Windows waits 200 ms) answers later than that: every such ACK would race a
    spurious timeout. With the floor on the variance the RTO always clears one delayed-ACK
    interval beyond the measured RTT, plus G: the timer must fall after the latest moment the
    ACK may come, not on it.

    Until a data segment has been timed the floor is the largest delay a receiver may hold an
    ACK for, 500 ms (RFC 9293 §3.8.6.3, MUST-40), if that is larger: the handshake gives SRTT
    (every stack answers a SYN-ACK at once), but says nothing about how long this peer sits on
    ACKs of data. The price is a slower timeout for a tail loss in the very first flight; the
    alternative is a spurious one for the first flight to every such peer.

    The backoff is cleared only by a new measurement (`sample`), never by an ACK alone: an ACK
    for a retransmitted segment proves nothing about the path's RTT (Karn), and RFC 6298 §5.7
    keeps the doubled RTO until a segment that was sent once has been timed.
    The clock granularity G is 1 ms (the timestamp clock).
    """

    __slots__ = (
        "srtt", "rttvar", "base_rto", "backoff", "min_rto", "max_rto", "min_rtt", "latest",
        "data_timed",
    )  # fmt: skip

    GRANULARITY = 0.001
    MAX_ACK_DELAY = 0.5

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.base_rto = initial_rto
        self.backoff = 0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.min_rtt: float | None = None
        self.latest: float | None = None
        self.data_timed = False

    @property
    def rto(self) -> float:
        """The current timeout: the computed RTO doubled once per unanswered expiry, capped."""
        return min(self.base_rto * (1 << self.backoff), self.max_rto)

    def sample(self, r: float, data: bool = True) -> None:
        """Fold in one RTT measurement (seconds) and clear the backoff. `data`: the segment
        timed carried data (not the SYN-ACK). Negative samples (clock misuse) are ignored."""
        if r < 0:
            return
        self.data_timed = self.data_timed or data
        self.latest = r
        if self.min_rtt is None or r < self.min_rtt:
            self.min_rtt = r
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self._update()
        self.backoff = 0

    def spurious_timeout(self, r: float) -> None:
        """A timeout turned out spurious (the ACK that answered it was for the original
        transmission): the path's delay jumped. RFC 4015 §4 (the Eifel response): restart the
        estimator from the delay that was just seen, so that the next RTO is well clear of it
        (SRTT = r, RTTVAR = r/2: RTO = 3r at least), rather than letting a long series of
        samples average it in while each races the timer. `r` is the age of the oldest octet
        the ACK covered (or a lower bound of it); a negative one (clock misuse) is ignored."""
        if r < 0:
            return
        self.data_timed = True
        srtt = self.srtt or 0.0
        self.srtt = max(srtt, r)
        self.rttvar = max(self.rttvar, r / 2)
        self._update()
        self.backoff = 0

    def _update(self) -> None:
        assert self.srtt is not None
        floor = self.min_rto if self.data_timed else max(self.min_rto, self.MAX_ACK_DELAY)
        rto = self.srtt + max(4 * self.rttvar, floor) + self.GRANULARITY
        self.base_rto = min(rto, self.max_rto)


class NewReno:
    """RFC 5681 slow start and congestion avoidance, byte-counted (RFC 3465, L = 2*SMSS).

    The hooks are called by the sender: `on_ack` only for ACKs of new data outside recovery and
    only while the window is actually the limit (RFC 7661: an application-limited sender must not
    grow a window it has not used), `on_congestion` once per loss event (fast retransmit),
    `on_rto` on a retransmission timeout, `on_recovery_end` on the full ACK that ends recovery.
    """

    __slots__ = ("mss", "cwnd", "ssthresh", "_acc")

    name = "newreno"
    beta = 0.5
    queue_beta = 0.85

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = 1 << 62
        self._acc = 0

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * self.mss)
            return
        self._avoid_congestion(acked, now, srtt)

    def _avoid_congestion(self, acked: int, now: float, srtt: float | None) -> None:
        # One SMSS per cwnd's worth of acknowledged bytes: RFC 5681 eq. (3) without rounding drift.
        self._acc += acked
        if self._acc >= self.cwnd:
            self._acc -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, now: float, flight: int) -> None:
        """Fast retransmit: RFC 5681 eq. (4); cwnd drops to ssthresh (RFC 6675 §5 step 4.2)."""
        self.ssthresh = max(int(flight * self.beta), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acc = 0

    def on_queue(self, now: float) -> None:
        """A standing queue (`StandingQueue`): give up `queue_beta` of the window and leave
        slow start, as for a loss but gentler (nothing was lost; the queue only has to drain)."""
        self.ssthresh = max(int(self.cwnd * self.queue_beta), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acc = 0

    def on_rto(self, now: float, flight: int) -> None:
        """RTO: ssthresh as for a loss, cwnd to the loss window of one segment (RFC 5681 §3.1)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._acc = 0

    def undo_state(self) -> tuple:
        """Everything the next reduction will change, to be put back by `undo` if that
        reduction turns out spurious (RFC 4015 §4, RFC 9438 §4.9: cwnd, ssthresh and, for CUBIC,
        W_max, K and the epoch as they were before the event)."""
        return tuple(getattr(self, f) for f in self._fields())

    def undo(self, state: tuple) -> None:
        for f, v in zip(self._fields(), state, strict=True):
            setattr(self, f, v)

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return tuple(f for c in reversed(cls.__mro__) for f in getattr(c, "__slots__", ()))

    def on_recovery_end(self) -> None:
        self.cwnd = max(self.ssthresh, 2 * self.mss)

    def on_idle_restart(self, initial_window: int) -> None:
        """RFC 5681 §4.1: after an idle period longer than the RTO, restart from the IW."""
        self.cwnd = min(self.cwnd, initial_window)

    def app_limited(self) -> None:
        """The window went unused this round; Reno keeps no state that this affects."""


class Cubic(NewReno):
    """CUBIC (RFC 9438): W(t) = C (t - K)^3 + W_max, with the Reno-friendly region (§4.3).

    Slow start, RTO and recovery end are NewReno's; congestion avoidance and the multiplicative
    decrease are CUBIC's. The epoch restarts after a loss and whenever the window was not being
    used (RFC 9438 §5.8), so an application-limited pause does not turn into a burst.
    """

    __slots__ = ("w_max", "w_last_max", "k", "epoch_start", "origin", "w_est")

    name = "cubic"
    beta = 0.7
    C = 0.4
    ALPHA = 3 * (1 - 0.7) / (1 + 0.7)

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self.w_max = 0.0
        self.w_last_max = 0.0
        self.k = 0.0
        self.epoch_start: float | None = None
        self.origin = 0.0
        self.w_est = 0.0

    def _avoid_congestion(self, acked: int, now: float, srtt: float | None) -> None:
        mss = self.mss
        cwnd = self.cwnd
        if self.epoch_start is None:
            self.epoch_start = now
            if cwnd < self.w_max:
                self.k = ((self.w_max - cwnd) / mss / self.C) ** (1 / 3)
                self.origin = self.w_max
            else:
                self.k = 0.0
                self.origin = cwnd
            self.w_est = cwnd
        t = now - self.epoch_start + (srtt or 0.0)
        target = self.origin + self.C * (t - self.k) ** 3 * mss
        target = min(max(target, cwnd), 1.5 * cwnd)
        self.w_est += self.ALPHA * mss * acked / cwnd
        if self.w_est > target:
            self.cwnd = int(self.w_est)  # Reno-friendly region
        else:
            self._acc += (target - cwnd) * acked / cwnd
            if self._acc >= 1:
                whole = int(self._acc)
                self.cwnd += whole
                self._acc -= whole

    def on_congestion(self, now: float, flight: int) -> None:
        cwnd = self.cwnd
        if cwnd < self.w_last_max:
            # Fast convergence (§4.7): release bandwidth to newer flows.
            self.w_last_max = cwnd
            self.w_max = cwnd * (1 + self.beta) / 2
        else:
            self.w_last_max = cwnd
            self.w_max = cwnd
        self.ssthresh = max(int(min(cwnd, max(flight, self.mss)) * self.beta), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acc = 0
        self.epoch_start = None

    def on_queue(self, now: float) -> None:
        self.w_last_max = self.w_max = float(self.cwnd)  # regrow toward it, concave
        super().on_queue(now)
        self.epoch_start = None

    def on_rto(self, now: float, flight: int) -> None:
        self.w_last_max = self.w_max = float(self.cwnd)
        self.ssthresh = max(int(self.cwnd * self.beta), 2 * self.mss)
        self.cwnd = self.mss
        self._acc = 0
        self.epoch_start = None

    def app_limited(self) -> None:
        """The window went unused: restart the cubic epoch when growth resumes."""
        self.epoch_start = None

    def on_idle_restart(self, initial_window: int) -> None:
        super().on_idle_restart(initial_window)
        self.epoch_start = None


class StandingQueue:
    """Finds a standing queue on the path from RTT samples, as CoDel finds one in a router.

    CUBIC and Reno grow the window until a queue overflows, so between losses the bottleneck's
    queue is full: toward a phone, its socket buffer and its WireGuard's queues, where every
    other packet to the phone (a ping, a call) waits behind the download, and is dropped when
    the buffer overflows. Single RTT samples cannot say whether a queue stands: ACKs come in
    batches and the hosts' schedulers add noise. CoDel's answer (RFC 8289) is the minimum over
    an interval: if even the best sample of an interval is more than `target` above the path's
    base RTT, the queue did not drain once in that interval and is standing. Then the sender
    gives up a little window (`on_queue`), as it would for a loss but gentler; between those
    reductions the congestion control grows as it always does, so the queue stays around the
    target instead of at the buffer's size, and no rate estimate can spiral the window down.

    The base RTT is the least sample of the last 5-10 s (`BaseRtt`). Samples come from
    segments timed with the sender's own clock (one per RTT, never a retransmission: Karn),
    not from 1 ms timestamps. The interval
    is 50 ms or 4 smoothed RTTs, whichever is longer, so that it holds several samples, and
    shrinks by the square root of the count of standing intervals in a row, as CoDel's does,
    so that a queue the window's growth keeps rebuilding is cut back harder.
    """

    __slots__ = ("target", "base", "best", "interval_end", "count")

    MIN_INTERVAL = 0.05

    def __init__(self, target: float) -> None:
        self.target = target
        self.base = BaseRtt()
        self.best = float("inf")  # the least sample of this interval
        self.interval_end: float | None = None
        self.count = 0  # intervals in a row that ended with a standing queue

    def sample(self, rtt: float, now: float, srtt: float | None, rttvar: float = 0.0) -> bool:
        """A timed segment was acknowledged after `rtt` seconds. True when an interval ended
        with a standing queue: the sender should reduce its window once. `rttvar` (RFC 6298)
        widens the margin where samples are noisy for reasons other than a queue: a peer that
        holds its ACKs up to 200-500 ms (delayed ACK) makes every sample late by a random
        amount, which no queue on the path explains."""
        if rtt <= 0:
            return False
        self.base.sample(rtt, now)
        if rtt < self.best:
            self.best = rtt
        if self.interval_end is None:
            self.interval_end = now + max(self.MIN_INTERVAL, 4 * (srtt or rtt))
            return False
        if now < self.interval_end:
            return False
        standing = self.best - self.base.value > max(self.target, 2 * rttvar)
        self.count = self.count + 1 if standing else 0
        self.best = float("inf")
        # CoDel's control law: while the queue keeps standing, judge (and reduce) more often.
        interval = max(self.MIN_INTERVAL, 4 * (srtt or rtt)) / (self.count + 1) ** 0.5
        self.interval_end = now + interval
        return standing


def make_congestion_control(name: str, mss: int, initial_window: int) -> NewReno:
    """The congestion controller called `name` ("cubic" or "newreno")."""
    if name == "cubic":
        return Cubic(mss, initial_window)
    if name == "newreno":
        return NewReno(mss, initial_window)
    raise ValueError(f"unknown congestion control {name!r}")
