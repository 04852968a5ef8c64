"""Fair limits of the exit: how many flows and how much TCP buffer memory each peer, and all
peers together, may hold, and who gives way when a limit is reached.

Every flow is a host socket (a file descriptor), and every TCP connection can tie up its buffers
(see `ExitConfig`), so an exit offered to strangers must bound both, per peer and in total,
without hurting ordinary use: a browser with a hundred connections, a package manager, a client
opening short connections back to back. The rules:

Flows (`max_flows` in total, `max_flows_per_peer` for one peer, TCP and UDP together):
- Only live flows can cause a refusal. A TCP connection whose data has been delivered both ways
  (TIME-WAIT, or only the FIN handshake left: `TcpConnection.finished`) is *reclaimable*: it
  holds no host socket and no buffer, and at any limit the oldest reclaimable connection (the
  peer's own at the peer's limit, anyone's at the total) is dropped first, as Linux reuses
  TIME-WAIT. So back-to-back connections never run into their own leftovers.
- At the peer's limit the peer recycles its own: its oldest reclaimable connection, else its
  least recently used UDP flow (like a NAT whose table is full); if every one of its flows is
  a live TCP connection, the new one is refused (RST, or ICMP administratively prohibited).
- At the total limit, a peer below its fair share (the total divided among the peers holding
  flows, itself included) takes a flow from the peer holding the most: that peer's least
  recently used UDP flow, else its least recently active TCP connection (reset both ways). A
  peer at or above its share recycles its own UDP flows or is refused. Since the table is full,
  someone holds more than the share whenever a peer is below it, so a peer below its fair share
  is never refused.

TCP buffers (`max_buffer` in total, `max_buffer_per_peer`): a connection's memory is bounded
by its receive buffer twice (in the connection and written to the shell but not yet to the
host) plus its send buffer. Reserving that worst case at full size (512 KiB each) for every
connection would allow a peer only ~85 connections, so buffers are granted and grown, as Linux
autotunes socket buffers within `tcp_mem`:
- A connection starts with small buffers (`START_BUFFER`, or the configured size if smaller) and
  a direction's buffer doubles, up to the configured size, each time it is what limits the
  transfer: the send buffer is full and all of it is in flight, or the peer used up the receive
  window while the host kept up. Idle connections keep the small grant; busy ones reach full
  size within a few round trips.
- The peer's budget always keeps room for a floor-sized grant (`floor`, derived so that
  `max_flows_per_peer` floor grants take at most half of `max_buffer_per_peer`) for every flow
  it may still open, so buffers alone never refuse a peer below its flow limit; only the room
  above that funds growth.
- Growth above the floor is free while the device's total stays under three quarters of
  `max_buffer`; beyond that only peers below their fair share of it grow. A new connection
  whose floor grant does not fit the total is admitted by evicting the least recently active
  connection of the peer reserving the most, if the new one's peer is below its fair share.
So ten peers at their limits reserve at most `max_buffer`, and a peer that fills its buffers on
purpose gains nothing over its share.

Every choice is O(log n): peers by flows and by reserved bytes sit in max-heaps, each peer's UDP
flows and live TCP connections in min-heaps by last activity, reclaimable connections in
insertion-ordered dicts. Heap entries are never updated in place; like the exit's timer heap, a
stale entry (the value moved on) is skipped or pushed again with the current value when it
surfaces, and heaps are rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools

from tether.netstack.exit.flows import TcpFlow
from tether.netstack.wire import ErrorRateLimiter, Reassembler

__all__ = ["START_BUFFER", "Limits", "PeerState"]

START_BUFFER = 64 * 1024  # a new connection's buffers in each direction, before growth
MIN_FLOOR = 8 * 1024  # no grant is smaller than this (a few segments), whatever the budgets
_GROWTH_FREE = 0.75  # growth is unconditional while the total stays under this share


class PeerState:
    """Per-peer accounting: flows for the limits, fragments, the ICMP error bucket, and how many
    packets the policy refused (kept here so that it goes when the peer's state goes); and the
    egress the peer's new flows take (`Exit.set_egress`)."""

    __slots__ = ("key", "udp_flows", "tcp", "echo", "reassembler", "limiter", "buffer",
                 "reclaimable", "udp_lru", "tcp_lru", "refused", "egress")  # fmt: skip

    def __init__(self, key: bytes, config, egress=None) -> None:
        self.key = key
        self.udp_flows: dict = {}  # flow key -> UdpFlow
        self.tcp: dict = {}  # flow key -> TcpFlow (live and reclaimable)
        self.echo = 0
        self.reassembler: Reassembler | None = None
        self.limiter = ErrorRateLimiter(config.icmp_error_rate, config.icmp_error_burst)
        self.buffer = 0  # bytes granted to its TCP connections
        self.reclaimable: dict = {}  # TcpFlow -> None, oldest first
        self.udp_lru: list = []  # (last, tie, UdpFlow)
        self.tcp_lru: list = []  # (last, tie, TcpFlow), live connections
        self.refused = 0
        self.egress = egress  # None: the host's own sockets; else the shell's proxy descriptor

    @property
    def flows(self) -> int:
        return len(self.udp_flows) + len(self.tcp)

    @property
    def live_tcp(self) -> int:
        return len(self.tcp) - len(self.reclaimable)


class Limits:
    """Admission, accounting and eviction for one `Exit` (see the module docstring).

    The flow tables report every flow they add or remove and ask before adding one; to make
    room, `Limits` asks them to drop a flow (`UdpTable.evict`, `TcpTable.evict`). It counts
    into the exit's `output.stats` and asks the exit only for `flow_count`.
    """

    def __init__(self, exit_, output, config) -> None:
        self.exit = exit_
        self._stats = output.stats
        self.grandfathered = False  # a lowered limit left holdings above it (see `configure`)
        self.holders: set[PeerState] = set()  # peers holding at least one flow
        self.buffer = 0  # bytes granted, all peers
        self.reclaimable: dict = {}  # TcpFlow -> None, oldest first, all peers
        # Max-heaps of peers; public so tests can see that stale entries stay bounded.
        self.by_flows: list = []  # (-flows, tie, PeerState)
        self.by_buffer: list = []  # (-buffer, tie, PeerState)
        self._tie = itertools.count()
        self.configure(config)

    def configure(self, config) -> None:
        """Take new limits (an edited `[Exit]` section) for everything from now on. Raised
        limits help at once. Flows and grants above a lowered limit are not cut: they make room
        as they end, and the peer recycles its own at its next new flow, as at any limit."""
        self.max_flows = config.max_flows
        self.per_peer = min(config.max_flows_per_peer, config.max_flows)
        self.max_buffer = config.max_buffer
        self.per_peer_buffer = config.max_buffer_per_peer
        tcp = config.tcp
        self.full = (tcp.recv_buffer, tcp.send_buffer)
        # Grants are the configured sizes shifted right by a level: 0 is full size.
        self.start_level = tuple(_level_at_most(size, START_BUFFER) for size in self.full)
        # The floor: the largest grant of which `per_peer` fit in half the peer's budget.
        floor_target = self.per_peer_buffer // (2 * self.per_peer)
        level = 0
        while self.cost(level, level) > floor_target and min(self.full) >> (level + 1) >= MIN_FLOOR:
            level += 1
        self.floor_level = level
        self.floor = self.cost(level, level)
        self.start_level = tuple(min(s, level) for s in self.start_level)
        if self.holders:
            self.grandfathered = self.grandfathered or (
                self.exit.flow_count > self.max_flows
                or self.buffer > self.max_buffer
                or any(
                    ps.flows > self.per_peer or ps.buffer > self.per_peer_buffer
                    for ps in self.holders
                )
            )

    def cost(self, recv_level: int, send_level: int) -> int:
        """Worst-case bytes of a connection with these grants (see the module docstring)."""
        return 2 * (self.full[0] >> recv_level) + (self.full[1] >> send_level)

    def sizes(self, flow) -> tuple[int, int]:
        return self.full[0] >> flow.recv_level, self.full[1] >> flow.send_level

    # -- flows ---------------------------------------------------------------------------------

    def admit(self, ps: PeerState, now: float) -> bool:
        """Make room for one more flow of `ps`; False: refuse it."""
        ex = self.exit
        while ps.flows >= self.per_peer:
            if not self._recycle_own(ps, now):
                return False
        while ex.flow_count >= self.max_flows:
            if self.reclaimable:
                self._reclaim(next(iter(self.reclaimable)), now)
                continue
            holders = len(self.holders) + (ps not in self.holders)
            share = min(self.per_peer, self.max_flows // holders)
            if ps.flows < share:
                # Someone holds more than the share (the table is full): the most, in fact.
                hog = self._top(self.by_flows, _flows)
                if (
                    hog is not None
                    and hog is not ps
                    and _flows(hog) > ps.flows + 1
                    and self._evict_any(hog, now)
                ):
                    self._stats["flows_evicted_fair_share"] += 1
                    continue
            if not self._evict_udp(ps, now):
                return False
        return True

    def _recycle_own(self, ps: PeerState, now: float) -> bool:
        if ps.reclaimable:
            self._reclaim(next(iter(ps.reclaimable)), now)
            return True
        return self._evict_udp(ps, now)

    def _reclaim(self, flow, now: float) -> None:
        self._stats["tcp_reclaimed"] += 1
        flow.owner.evict(flow, now, reset=False)

    def _evict_udp(self, ps: PeerState, now: float) -> bool:
        flow = _least_recent(ps.udp_lru, len(ps.udp_flows), ps.udp_flows.values(), self._tie)
        if flow is None:
            return False
        self._stats["udp_evicted"] += 1
        flow.owner.evict(flow, now)
        return True

    def _evict_tcp(self, ps: PeerState, now: float) -> bool:
        flow = _least_recent(ps.tcp_lru, ps.live_tcp, self._live_tcp(ps), self._tie)
        if flow is None:
            return False
        self._stats["tcp_evicted"] += 1
        flow.owner.evict(flow, now, reset=True)
        return True

    def _evict_any(self, ps: PeerState, now: float) -> bool:
        if ps.reclaimable:
            self._reclaim(next(iter(ps.reclaimable)), now)
            return True
        return self._evict_udp(ps, now) or self._evict_tcp(ps, now)

    @staticmethod
    def _live_tcp(ps: PeerState):
        return (f for f in ps.tcp.values() if not f.reclaimable)

    def added(self, ps: PeerState, flow) -> None:
        """A flow of `ps` entered a table."""
        self.holders.add(ps)
        heapq.heappush(self.by_flows, (-ps.flows, next(self._tie), ps))
        tie = self._tie
        if type(flow) is TcpFlow:
            heapq.heappush(ps.tcp_lru, (flow.last, next(tie), flow))
            _compact_lru(ps.tcp_lru, ps.live_tcp, self._live_tcp(ps), tie)
        else:
            heapq.heappush(ps.udp_lru, (flow.last, next(tie), flow))
            _compact_lru(ps.udp_lru, len(ps.udp_flows), ps.udp_flows.values(), tie)
        self._compact()

    def removed(self, ps: PeerState, flow) -> None:
        """A flow of `ps` left its table (after the table forgot it)."""
        if flow.reclaimable:
            flow.reclaimable = False
            del self.reclaimable[flow]
            del ps.reclaimable[flow]
        self.release(flow)
        n = ps.flows
        if n:
            heapq.heappush(self.by_flows, (-n, next(self._tie), ps))
        else:
            self.holders.discard(ps)

    def _compact(self) -> None:
        limit = 2 * len(self.holders) + 64
        if len(self.by_flows) > limit:
            self.by_flows = [(-_flows(p), next(self._tie), p) for p in self.holders]
            heapq.heapify(self.by_flows)
        if len(self.by_buffer) > limit:
            self.by_buffer = [(-p.buffer, next(self._tie), p) for p in self.holders if p.buffer]
            heapq.heapify(self.by_buffer)

    @staticmethod
    def _top(heap: list, value):
        """The peer with the largest `value`, dropping stale entries."""
        while heap:
            v, _, ps = heap[0]
            if -v == value(ps) and v:
                return ps
            heapq.heappop(heap)
        return None

    # -- TCP buffers ---------------------------------------------------------------------------

    def grant(self, ps: PeerState, now: float) -> tuple[int, int, int] | None:
        """Reserve buffers for a new connection of `ps`: (receive level, send level, bytes),
        for the flow's `recv_level`, `send_level` and `grant`; None: refuse it."""
        floor_level = self.floor_level
        rl, sl = self.start_level
        cost = self.cost(rl, sl)
        if (rl, sl) != (floor_level, floor_level) and self._may_grow(ps, cost, new=True):
            self._add_buffer(ps, cost)
            return rl, sl, cost
        floor = self.floor
        if ps.buffer + floor > self.per_peer_buffer:
            self._stats["refused_buffer_limit"] += 1
            return None
        while self.buffer + floor > self.max_buffer:
            holders = len(self.holders) + (ps not in self.holders)
            share = min(self.per_peer_buffer, self.max_buffer // holders)
            hog = self._top(self.by_buffer, _buffer)
            if (
                ps.buffer + floor > share
                or hog is None
                or hog is ps
                or not self._evict_tcp(hog, now)
            ):
                self._stats["refused_buffer_limit"] += 1
                return None
            self._stats["tcp_evicted_fair_share"] += 1
        self._add_buffer(ps, floor)
        return floor_level, floor_level, floor

    def _may_grow(self, ps: PeerState, delta: int, new: bool = False) -> bool:
        """May `ps` reserve `delta` more bytes above the floor (`new`: for a new connection)?"""
        reserve = self.floor * max(0, self.per_peer - ps.live_tcp - (1 if new else 0))
        if ps.buffer + delta + reserve > self.per_peer_buffer:
            return False
        total = self.buffer + delta
        if total <= self.max_buffer * _GROWTH_FREE:
            return True
        holders = len(self.holders) + (ps not in self.holders)
        return total <= self.max_buffer and ps.buffer + delta <= self.max_buffer // holders

    def grow(self, flow, recv: bool) -> bool:
        """Double one direction's buffer of a live connection if the budgets allow."""
        if recv:
            level, other = flow.recv_level, flow.send_level
        else:
            level, other = flow.send_level, flow.recv_level
        if level == 0 or flow.reclaimable:
            return False
        new = self.cost(level - 1, other) if recv else self.cost(other, level - 1)
        delta = new - flow.grant
        ps = flow.peer
        if not self._may_grow(ps, delta):
            return False
        if recv:
            flow.recv_level -= 1
        else:
            flow.send_level -= 1
        flow.grant = new
        self._add_buffer(ps, delta)
        self._stats["tcp_buffer_grown"] += 1
        return True

    def release(self, flow) -> None:
        """The connection's buffers are empty for good (reclaimable or gone)."""
        if flow.grant:
            self._add_buffer(flow.peer, -flow.grant)
            flow.grant = 0

    def _add_buffer(self, ps: PeerState, delta: int) -> None:
        ps.buffer += delta
        self.buffer += delta
        if ps.buffer:
            heapq.heappush(self.by_buffer, (-ps.buffer, next(self._tie), ps))

    def set_reclaimable(self, flow) -> None:
        """The connection delivered everything both ways; it may be dropped to make room."""
        flow.reclaimable = True
        self.reclaimable[flow] = None
        flow.peer.reclaimable[flow] = None
        self.release(flow)

    def audit(self, peers, tcp_flows: int, udp_flows: int) -> None:
        """Recount everything and check it against the bookkeeping and the limits; raises
        AssertionError on a difference. `peers`: every PeerState the exit holds; `tcp_flows` and
        `udp_flows`: the sizes of its tables. O(flows): for tests and the fuzzer (through
        `Exit.audit`), never per packet."""
        bound = not self.grandfathered  # holdings above lowered limits are allowed to drain
        peers = [ps for ps in peers if ps.flows]
        assert set(peers) == self.holders, "holders"
        assert not bound or tcp_flows + udp_flows <= self.max_flows, "max_flows"
        total = 0
        for ps in peers:
            assert not bound or ps.flows <= self.per_peer, "max_flows_per_peer"
            granted = sum(f.grant for f in ps.tcp.values())
            assert granted == ps.buffer, "peer buffer bookkeeping"
            assert not bound or ps.buffer <= self.per_peer_buffer, "max_buffer_per_peer"
            assert set(ps.reclaimable) == {f for f in ps.tcp.values() if f.reclaimable}
            assert all(f.grant == 0 for f in ps.reclaimable), "reclaimable holds a grant"
            total += granted
        assert total == self.buffer, "buffer bookkeeping"
        assert not bound or total <= self.max_buffer, "max_buffer"
        assert sum(len(ps.reclaimable) for ps in peers) == len(self.reclaimable)
        assert tcp_flows == sum(len(ps.tcp) for ps in peers), "tcp table"
        assert udp_flows == sum(len(ps.udp_flows) for ps in peers), "udp table"


def _flows(ps: PeerState) -> int:
    return len(ps.udp_flows) + len(ps.tcp)


def _buffer(ps: PeerState) -> int:
    return ps.buffer


def _level_at_most(size: int, cap: int) -> int:
    level = 0
    while size >> level > cap:
        level += 1
    return level


def _compact_lru(heap: list, live: int, flows, tie) -> None:
    """Rebuild a per-peer heap from its `live` `flows` once stale entries outnumber them (so
    flows that come and go without an eviction leave no trail); O(1) amortized per push."""
    if len(heap) > 2 * live + 16:
        heap[:] = [(f.last, next(tie), f) for f in flows]
        heapq.heapify(heap)


def _least_recent(heap: list, live: int, flows, tie):
    """Pop the least recently active flow from a per-peer heap of (last, tie, flow) entries.

    An entry is stale when its flow closed (dropped), became reclaimable (dropped) or was active
    since (pushed again with its current time)."""
    _compact_lru(heap, live, flows, tie)
    while heap:
        last, _, flow = heap[0]
        if flow.closed or flow.reclaimable:
            heapq.heappop(heap)
        elif flow.last != last:
            heapq.heapreplace(heap, (flow.last, next(tie), flow))
        else:
            heapq.heappop(heap)
            return flow
    return None
