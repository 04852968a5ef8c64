"""States, tunables and events of the TCP terminator (`connection`), kept apart so the shell can
import them without the machinery."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ConnectionClosed",
    "ConnectionReset",
    "DataReadable",
    "Established",
    "PeerEof",
    "State",
    "TcpConfig",
    "TcpEvent",
]


class State(enum.Enum):
    """RFC 9293 states, plus SYN-RECEIVED while the host socket is still connecting."""

    SYN_RECEIVED_PENDING = "SYN-RECEIVED (host connecting)"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Tunables. Defaults suit phones behind WireGuard; timeouts are in seconds."""

    recv_buffer: int = 512 * 1024  # bound on unread + out-of-order data from the peer
    send_buffer: int = 512 * 1024  # bound on host data not yet acked by the peer
    initial_rto: float = 1.0  # RFC 6298 §2.1
    min_rto: float = 0.2  # Linux's floor; RFC 6298 says 1 s
    max_rto: float = 60.0
    max_retransmits: int = 10  # consecutive RTOs (or unanswered probes) before giving up
    max_synack_retransmits: int = 5  # Linux tcp_synack_retries
    delayed_ack: float = 0.04
    time_wait: float = 4.0
    keepalive_idle: float | None = 300.0  # silence from the peer before probing
    keepalive_interval: float = 30.0
    keepalive_probes: int = 4
    idle_timeout: float | None = 7200.0  # no payload either way for this long: abort
    connect_timeout: float = 30.0  # host connect must finish within this
    congestion: str = "cubic"  # or "newreno"
    initial_window_segments: int = 10  # RFC 6928
    max_ooo_ranges: int = 64
    max_sack_ranges: int = 64
    challenge_ack_interval: float = 0.1  # RFC 5961 §7 rate limit, per connection
    # Queueing delay in front of the exit that a peer's upload may cause (the receive window
    # clamp, `ReceiveSide.receive_queue_delay`) and a download may keep toward the peer (the
    # sender's `StandingQueue`): short enough for a call beside a transfer, long enough for a
    # host that is not always scheduled. On a quiet bench machine 0.5 ms kept 1 ms's upload
    # rate (522 vs 525 Mbit/s, 8 paired runs) with ping p50/p90 2.03/3.18 ms instead of
    # 2.29/3.60; on the same machine under other tenants' load (steal) it lost a third (median
    # 222 vs 330 Mbit/s, one run at 100): the clamp read the host's stalls as a queue. An exit
    # on a shared VPS lives with steal, so 1 ms. (0.3 ms cost a sixth of the rate even quiet.)
    queue_delay_target: float = 0.001

    def __post_init__(self) -> None:
        # Checked once here so that a bad setting fails at configuration time, not on a SYN.
        if min(self.recv_buffer, self.send_buffer, self.max_ooo_ranges, self.max_sack_ranges) < 1:
            raise ValueError("buffer sizes and range limits must be positive")
        if not 0 < self.min_rto <= self.max_rto or self.initial_rto <= 0:
            raise ValueError("need 0 < min_rto <= max_rto and a positive initial_rto")
        if self.congestion not in ("cubic", "newreno"):
            raise ValueError(f"unknown congestion control {self.congestion!r}")
        if not self.queue_delay_target > 0:
            raise ValueError("queue_delay_target must be positive")
        if self.initial_window_segments < 1 or self.max_retransmits < 0:
            raise ValueError("initial_window_segments must be >= 1, max_retransmits >= 0")


class TcpEvent:
    """Base of what `TcpConnection.take_events()` returns."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__
        )

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, f) for f in self.__slots__)))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({args})"


class Established(TcpEvent):
    """The peer completed the handshake."""

    __slots__ = ()


class DataReadable(TcpEvent):
    """Data became available to `take_peer_data` (edge-triggered: the buffer was empty)."""

    __slots__ = ()


class PeerEof(TcpEvent):
    """The peer sent FIN: once `take_peer_data` returns nothing more, shutdown(SHUT_WR) the host."""

    __slots__ = ()


class ConnectionReset(TcpEvent):
    """The connection was aborted: reset the host socket (SO_LINGER 0), or for
    "connect-timeout" answer the SYN with ICMP unreachable. `reason` is one of "peer-reset",
    "connect-timeout", "handshake-timeout", "retransmission-timeout", "persist-timeout",
    "keepalive-timeout", "idle-timeout". (Aborts the shell asks for raise no event.)"""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ConnectionClosed(TcpEvent):
    """Terminal: no timers, nothing more to send; forget the connection once its data is read."""

    __slots__ = ()
