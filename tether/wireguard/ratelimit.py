"""Handshake DoS defences of the device core (paper §5.3): load detection and rate limiting.

Split out of core.py to keep that module readable; both classes are sans-IO and take `now`.

"Under load" (`LoadMonitor`): wireguard-go calls a device under load while its handshake queue
holds at least 1/8 of its capacity, i.e. while handshake work arrives faster than its workers
drain it. A sans-IO core has no queue to measure, so it measures the arrival rate instead: the
device is under load when more than `rate` handshake messages (initiations and responses that
carried a valid mac1, i.e. those that would cost us Diffie-Hellman work) arrived within the last
second, and it stays under load for UNDER_LOAD_AFTER_TIME after the last time that was true. The
default of 500/s is well below what one core can answer (a few thousand per second) so cookies
are demanded before the CPU saturates, and far above what a legitimate hub sees (every peer
handshakes about once per REKEY_AFTER_TIME).

Rate limiting (`HandshakeRateLimiter`): while under load, each source that proved it can receive
at its address (valid mac2) gets a token bucket of 20 handshakes per second with a burst of 5,
keyed by IPv4 address or IPv6 /64 as the kernel does (one host usually owns a whole /64).
"""

from __future__ import annotations

import ipaddress
import math

from tether.wireguard.constants import UNDER_LOAD_AFTER_TIME

__all__ = ["DEFAULT_UNDER_LOAD_RATE", "HandshakeRateLimiter", "LoadMonitor"]

DEFAULT_UNDER_LOAD_RATE = 500
LOAD_WINDOW = 1.0

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
GARBAGE_COLLECT_TIME = 1.0
_PACKET_COST = 1.0 / PACKETS_PER_SECOND  # tokens are measured in seconds of credit
_MAX_TOKENS = _PACKET_COST * PACKETS_BURSTABLE


class LoadMonitor:
    """Sliding-window arrival rate of handshake messages; see the module docstring.

    A ring holds the arrival times of the last `rate` messages, so "more than `rate` within
    LOAD_WINDOW" is one comparison with the entry being overwritten: exact, O(1), no buckets.
    """

    __slots__ = ("rate", "_ring", "_pos", "_until")

    def __init__(self, rate: int = DEFAULT_UNDER_LOAD_RATE) -> None:
        if rate < 1:
            raise ValueError("under-load rate must be at least 1 message per second")
        self.rate = rate
        self._ring = [-math.inf] * rate
        self._pos = 0
        self._until = -math.inf

    def record(self, now: float) -> bool:
        """Count one handshake message arriving at `now`; True if the device is under load."""
        pos = self._pos
        ring = self._ring
        oldest = ring[pos]  # arrival of the message `rate` messages before this one
        ring[pos] = now
        pos += 1
        self._pos = 0 if pos == self.rate else pos
        if now - oldest < LOAD_WINDOW:
            self._until = now + UNDER_LOAD_AFTER_TIME
            return True
        return now < self._until

    def under_load(self, now: float) -> bool:
        return now < self._until


def _source_key(ip: str) -> str | bytes:
    if ":" not in ip:
        return ip
    try:
        return ipaddress.IPv6Address(ip).packed[:8]
    except ValueError:
        return ip


class HandshakeRateLimiter:
    """Per-source token buckets (wireguard-go's ratelimiter), garbage-collected lazily."""

    __slots__ = ("_table", "_last_gc")

    def __init__(self) -> None:
        # key -> [last refill time, tokens]
        self._table: dict[str | bytes, list[float]] = {}
        self._last_gc = -math.inf

    def allow(self, ip: str, now: float) -> bool:
        table = self._table
        if now - self._last_gc >= GARBAGE_COLLECT_TIME:
            self._collect(now)
        key = _source_key(ip)
        entry = table.get(key)
        if entry is None:
            table[key] = [now, _MAX_TOKENS - _PACKET_COST]
            return True
        tokens = min(_MAX_TOKENS, entry[1] + max(0.0, now - entry[0]))
        entry[0] = now
        if tokens > _PACKET_COST:
            entry[1] = tokens - _PACKET_COST
            return True
        entry[1] = tokens
        return False

    def _collect(self, now: float) -> None:
        """Forget sources idle for over a second: a full bucket and no entry behave alike."""
        self._last_gc = now
        stale = [key for key, (last, _) in self._table.items() if now - last > GARBAGE_COLLECT_TIME]
        for key in stale:
            del self._table[key]

    def __len__(self) -> int:
        return len(self._table)
