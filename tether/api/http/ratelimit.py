"""Per-client token buckets for every request that is not the admin's.

Adding a peer writes the file and takes an address from a finite pool, and drawing a QR code
costs about 14 ms of Python on the same interpreter as the data plane, so one client must not be
able to exhaust a /24 in a second or keep a core busy. Clients are keyed by IPv4 address or IPv6
/64 (`access.client_key`). The table of buckets is bounded (least recently seen client evicted
first) so that a flood from many source addresses cannot grow memory without limit.
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


def parse_rate_limit(text: str) -> RateLimit | None:
    """`PER_MINUTE[:BURST]` (`--api-rate-limit`); 0 turns the limit off (None). BURST defaults
    to a third of PER_MINUTE, at least 1. ValueError with a one-line message."""
    rate_text, colon, burst_text = str(text).strip().partition(":")
    try:
        per_minute = float(rate_text)
        if colon and not burst_text:
            raise ValueError
        burst = int(burst_text) if colon else max(1, int(min(per_minute, 3e6) // 3))
    except ValueError:
        raise ValueError(
            f"--api-rate-limit: {text!r} is not PER_MINUTE[:BURST] (e.g. 30:10, or 0 for off)"
        ) from None
    if not 0 <= per_minute <= 1_000_000 or per_minute != per_minute:
        raise ValueError(f"--api-rate-limit: {rate_text!r} must be between 0 and 1000000")
    if per_minute == 0:
        return None
    if not 1 <= burst <= 1_000_000:
        raise ValueError(f"--api-rate-limit: burst {burst_text!r} must be between 1 and 1000000")
    return RateLimit(per_minute=per_minute, burst=burst)


class RateLimiter:
    """A token bucket per client key, bounded in memory (the least recently seen clients are
    forgotten first), so that a stranger cannot take every address with a loop."""

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
