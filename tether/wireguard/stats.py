"""The device core's counters, in a module of their own so that both halves of the core (the
data path in core.py and the handshakes in handshakes.py) count into them without importing
each other."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

__all__ = ["DROP_PREFIX", "CoreStats"]

DROP_PREFIX = "drop_"


@dataclass
class CoreStats:
    """Counters for `wg show`-style diagnostics and metrics; drops are keyed by reason.

    Mutable and owned by the core, which hands out copies (`WireGuardCore.counters()`)."""

    drops: Counter = field(default_factory=Counter)
    initiations_sent: int = 0
    initiations_received: int = 0  # authenticated and admitted (fresh timestamp, not a flood)
    responses_sent: int = 0
    responses_received: int = 0  # authenticated
    handshakes_completed: int = 0  # initiator: response consumed; responder: key confirmed
    cookie_replies_sent: int = 0
    cookie_replies_received: int = 0  # authenticated
    keepalives_received: int = 0
    initiations_forwarded: int = 0  # to the worker that owns the peer (docs/workers.md)

    def snapshot(self) -> Counter:
        """Every counter in one flat mapping (a copy): the fields by name, each drop reason as
        `drop_<reason>`. A Counter, so a reason that never happened reads as 0."""
        out = Counter({f.name: getattr(self, f.name) for f in fields(self) if f.name != "drops"})
        for reason, count in self.drops.items():
            out[DROP_PREFIX + reason] = count
        return out
