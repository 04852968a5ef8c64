"""The five per-peer timers of the WireGuard paper (§6.2-§6.5), sans-IO.

Each timer is a deadline in the caller's monotonic seconds, or None when not pending:

- retransmit_handshake: REKEY_TIMEOUT + jitter after an initiation is sent; resend, or give up
  after MAX_TIMER_HANDSHAKES retries (§6.4).
- send_keepalive: KEEPALIVE_TIMEOUT after data was received while we sent nothing back; an
  empty transport message tells the peer the session is alive (§6.5, passive keepalive).
- new_handshake: KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter after data was sent with nothing
  authenticated received since; the session is presumed dead and a handshake is started (§6.5).
- zero_key_material: REJECT_AFTER_TIME * 3 after the last session was derived; every key and
  queued packet is erased (§6.3), so an idle peer holds no key material.
- persistent_keepalive: the configured interval after any authenticated packet went either way,
  to keep NAT mappings open (§6.5).

The `timers_*` hooks are named and placed as wireguard-go places its calls, so the two can be
read side by side. Instead of one OS timer per (peer, timer), all deadlines live in one
`TimerQueue`, a binary heap with lazy invalidation: a hook only pushes when a deadline moves
*earlier* than the peer's heap entry, so the per-packet hooks (which mostly move deadlines later
or clear them) cost a comparison. `TimerQueue.next_timer` repairs the top entry against the
peer's true earliest deadline before answering, so the answer is exact and the IO shell can
sleep until precisely then.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

from tether.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
)

__all__ = [
    "NEW_HANDSHAKE",
    "PERSISTENT_KEEPALIVE",
    "RETRANSMIT_HANDSHAKE",
    "SEND_KEEPALIVE",
    "ZERO_KEY_MATERIAL",
    "PeerTimers",
    "TimerQueue",
]

# Timer identities returned by PeerTimers.pop_expired, in the order ties are fired.
RETRANSMIT_HANDSHAKE = 0
SEND_KEEPALIVE = 1
NEW_HANDSHAKE = 2
PERSISTENT_KEEPALIVE = 3
ZERO_KEY_MATERIAL = 4

_TIMER_ATTRS = (
    "retransmit_handshake_at",
    "send_keepalive_at",
    "new_handshake_at",
    "persistent_keepalive_at",
    "zero_key_material_at",
)


class TimerQueue:
    """Earliest deadline across all peers: a heap of (deadline, seq, peer) with lazy repair.

    Invariant: a peer with any pending timer has an entry whose deadline equals its
    `queued_at`, and `queued_at` is no later than its earliest pending deadline. Entries whose
    deadline differs from their peer's `queued_at` are stale and skipped. `queued_at` is the
    queue's bookkeeping, kept on the peer so that the per-packet hooks compare one slot.
    """

    __slots__ = ("_heap", "_seq", "_compact_at", "jitter")

    def __init__(self, jitter: Callable[[], float]) -> None:
        self._heap: list[tuple[float, int, PeerTimers]] = []
        self._seq = itertools.count()
        # Stale entries are dropped wholesale once the heap doubles past its last clean size,
        # which keeps both the size O(peers) and the cost amortised O(1) per push.
        self._compact_at = 256
        # Seconds in [0, REKEY_TIMEOUT_JITTER_MAX), from the core's injectable randomness.
        self.jitter = jitter

    def push(self, peer: PeerTimers, deadline: float) -> None:
        peer.queued_at = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), peer))
        if len(self._heap) > self._compact_at:
            self._compact()

    def reschedule(self, peer: PeerTimers) -> None:
        """Make sure the peer's earliest deadline is covered by an entry (after firing it)."""
        earliest = peer.earliest_deadline()
        if earliest is not None and (peer.queued_at is None or earliest < peer.queued_at):
            self.push(peer, earliest)

    def _settle(self) -> tuple[float, int, PeerTimers] | None:
        """Drop stale entries and repair the top until it is exact; return it."""
        heap = self._heap
        while heap:
            top = heap[0]
            deadline, _, peer = top
            if peer.queued_at != deadline:
                heapq.heappop(heap)
                continue
            earliest = peer.earliest_deadline()
            if earliest == deadline:
                return top
            heapq.heappop(heap)
            peer.queued_at = None
            if earliest is not None:
                self.push(peer, earliest)
        return None

    def next_timer(self) -> float | None:
        """The exact earliest pending deadline of any peer, or None."""
        top = self._settle()
        return None if top is None else top[0]

    def pop_due(self, now: float) -> list[PeerTimers]:
        """Peers with a timer due at `now`, each once; their heap entries are consumed, so the
        caller must fire them and then `reschedule` each."""
        due = []
        heap = self._heap
        while True:
            top = self._settle()
            if top is None or top[0] > now:
                break
            heapq.heappop(heap)
            peer = top[2]
            peer.queued_at = None
            due.append(peer)
        return due

    def _compact(self) -> None:
        """Rebuild without stale entries, so a long busy period cannot grow the heap."""
        seen: set[int] = set()
        fresh = []
        for entry in self._heap:
            deadline, _, peer = entry
            if peer.queued_at == deadline and id(peer) not in seen:
                seen.add(id(peer))
                fresh.append(entry)
        heapq.heapify(fresh)
        self._heap = fresh
        self._compact_at = max(256, 2 * len(fresh))

    def __len__(self) -> int:
        return len(self._heap)


class PeerTimers:
    """Timer state of one peer, mixed into `Peer`; the hooks are called by the core."""

    __slots__ = (
        "retransmit_handshake_at",
        "send_keepalive_at",
        "new_handshake_at",
        "persistent_keepalive_at",
        "zero_key_material_at",
        "handshake_attempts",
        "need_another_keepalive",
        "sent_last_minute_handshake",
        "queued_at",
        "_timer_queue",
    )

    # Provided by Peer.
    persistent_keepalive: int
    last_handshake_wall: float | None

    def _init_timers(self, queue: TimerQueue) -> None:
        self.retransmit_handshake_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.persistent_keepalive_at: float | None = None
        self.zero_key_material_at: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        # The deadline of this peer's live TimerQueue entry, None when it has none; the queue
        # maintains it (see TimerQueue's invariant), the hooks only read it.
        self.queued_at: float | None = None
        self._timer_queue = queue

    def _armed(self, deadline: float) -> None:
        key = self.queued_at
        if key is None or deadline < key:
            self._timer_queue.push(self, deadline)

    def earliest_deadline(self) -> float | None:
        earliest = None
        for deadline in (
            self.retransmit_handshake_at,
            self.send_keepalive_at,
            self.new_handshake_at,
            self.persistent_keepalive_at,
            self.zero_key_material_at,
        ):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def pop_expired(self, now: float) -> int | None:
        """Clear and return the earliest timer due at `now` (ties in RETRANSMIT.. order)."""
        best = None
        best_at = math.inf
        for which, attr in enumerate(_TIMER_ATTRS):
            deadline = getattr(self, attr)
            if deadline is not None and deadline <= now and deadline < best_at:
                best, best_at = which, deadline
        if best is not None:
            setattr(self, _TIMER_ATTRS[best], None)
        return best

    def timers_stop(self) -> None:
        """Cancel everything (peer removed); its heap entries become stale."""
        for attr in _TIMER_ATTRS:
            setattr(self, attr, None)
        self.queued_at = None

    # The hooks. Each docstring says when the core calls it.

    def timers_data_sent(self, now: float) -> None:
        """After an encrypted data packet (not a keepalive) was sent."""
        if self.new_handshake_at is None:
            deadline = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._timer_queue.jitter()
            self.new_handshake_at = deadline
            self._armed(deadline)

    def timers_data_received(self, now: float) -> None:
        """After an authenticated data packet (not a keepalive) was received."""
        if self.send_keepalive_at is None:
            deadline = now + KEEPALIVE_TIMEOUT
            self.send_keepalive_at = deadline
            self._armed(deadline)
        else:
            self.need_another_keepalive = True

    def timers_any_authenticated_packet_sent(self) -> None:
        """After any authenticated packet was sent: it doubles as the keepalive we owed."""
        self.send_keepalive_at = None

    def timers_any_authenticated_packet_received(self) -> None:
        """After any authenticated packet was received: the peer is alive."""
        self.new_handshake_at = None

    def timers_handshake_initiated(self, now: float) -> None:
        """After a handshake initiation was sent."""
        deadline = now + REKEY_TIMEOUT + self._timer_queue.jitter()
        self.retransmit_handshake_at = deadline
        self._armed(deadline)

    def timers_handshake_complete(self, wall: float) -> None:
        """After a response was consumed, or a responder session was confirmed by data."""
        self.retransmit_handshake_at = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.last_handshake_wall = wall

    def timers_session_derived(self, now: float) -> None:
        """After a session was derived, as initiator or responder."""
        deadline = now + REJECT_AFTER_TIME * 3
        self.zero_key_material_at = deadline
        self._armed(deadline)

    def timers_any_authenticated_packet_traversal(self, now: float) -> None:
        """Before an authenticated packet is sent or after one is received."""
        interval = self.persistent_keepalive
        if interval:
            deadline = now + interval
            self.persistent_keepalive_at = deadline
            self._armed(deadline)

    def timers_fire_persistent_keepalive_now(self, now: float) -> None:
        """Used when persistent keepalive is switched on: wireguard-go sends one at once."""
        self.persistent_keepalive_at = now
        self._armed(now)
