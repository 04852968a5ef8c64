"""The exit's tunables, apart from the dispatcher so that every part of the exit can name them
without importing the `Exit` itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.netstack.tcp import TcpConfig

__all__ = ["ExitConfig"]


@dataclass(frozen=True, slots=True)
class ExitConfig:
    """Tunables of the exit. Times in seconds, sizes in bytes.

    UDP idle timeouts: a UDP flow is a NAT mapping in all but name, so RFC 4787 REQ-5 applies:
    a mapping must live at least 2 minutes once used, except for ports whose protocols are known
    to be short (DNS). 120 s is that floor; NAT keep-alives (QUIC's, WireGuard's 25 s, VoIP's
    15-30 s) stay well inside it. A flow that never saw a reply is kept only 30 s (Linux
    conntrack's unreplied UDP timeout), and DNS flows (destination port 53) 10 s: resolvers
    answer in well under a second and pick a fresh source port per query, so longer would only
    hold one socket per query.
    """

    udp_idle: float = 120.0
    udp_idle_unreplied: float = 30.0
    udp_idle_dns: float = 10.0
    # Limits (see `limits` for how they are shared fairly). Flows are TCP and UDP together:
    # each is a host socket. Buffers are the TCP connections' worst-case memory, granted and
    # grown within these budgets.
    max_flows: int = 16384  # all peers
    max_flows_per_peer: int = 1024
    max_buffer: int = 1 << 30  # all peers
    max_buffer_per_peer: int = 128 << 20
    max_echo_per_peer: int = 64  # outstanding echo requests
    echo_timeout: float = 10.0  # an unanswered echo request is forgotten after this
    reassembly_bytes_per_peer: int = 1 << 20
    reassembly_datagrams_per_peer: int = 64
    icmp_error_rate: float = 100.0  # per peer, per second (token bucket)
    icmp_error_burst: float = 50.0
    tcp: TcpConfig = field(default_factory=TcpConfig)

    def __post_init__(self) -> None:
        for name in ("max_flows", "max_flows_per_peer", "max_buffer", "max_buffer_per_peer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
