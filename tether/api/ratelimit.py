"""Per-client-IP token buckets for the routes that create peers.

Adding a peer writes the file and takes an address from a finite pool, so one client must not be
able to exhaust a /24 in a second. The table of buckets is bounded (least recently seen client
evicted first) so that a flood from many source addresses cannot grow memory without limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """`burst` requests at once, refilled at `per_minute` requests per minute."""

    per_minute: float = 30.0
    burst: int = 10
    max_clients: int = 10_000


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else seconds until the next token."""
        rate = self.limit.per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.pop(client, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - when) * rate)
            if tokens >= 1.0:
                wait = 0.0
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate if rate > 0 else float("inf")
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.limit.max_clients:
                self._buckets.popitem(last=False)
            return wait
