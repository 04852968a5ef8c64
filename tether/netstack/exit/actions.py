"""What the sans-IO exit asks its IO shell to do with host sockets.

The exit never touches a socket. It returns actions in order (`Exit.take_actions()`); the shell
executes them in that order and reports what the host did through the exit's `receive_*`
methods (`receive_udp_datagram`, `receive_tcp_connected`, `receive_tcp_data`, ...). Actions name
a flow object (`flows`); its `handle` slot belongs to the shell (it keeps its socket there,
saving a dict lookup per datagram).

Actions are NamedTuples: one tuple allocation each, and the shell dispatches on `type(action)`
with one dict lookup. Payloads may be memoryviews into a peer's packet: the shell must consume
them while executing the action (send or copy), never keep them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tether.netstack.exit.flows import TcpFlow, UdpFlow

__all__ = [
    "ACTION_TYPES",
    "EchoSend",
    "TcpClose",
    "TcpConnect",
    "TcpPauseReading",
    "TcpResumeReading",
    "TcpShutdown",
    "TcpWrite",
    "UdpClose",
    "UdpOpen",
    "UdpSend",
]


class UdpOpen(NamedTuple):
    """Create a UDP socket connected to (flow.host, flow.port); read datagrams from it and report
    them with `receive_udp_datagram`, errors with `receive_udp_error`, a failed creation with
    `receive_udp_open_failed`. With `flow.egress` set, the datagrams go through that upstream
    proxy instead (never from a host socket of their own), and the end of the proxy's
    association is reported with `receive_udp_closed`."""

    flow: UdpFlow


class UdpSend(NamedTuple):
    """Send one datagram on the flow's socket. A full socket buffer drops it (as a NIC would);
    report that, like any other error, with `receive_udp_error`."""

    flow: UdpFlow
    payload: Any  # bytes | memoryview


class UdpClose(NamedTuple):
    """Close the flow's socket (idle expiry, eviction, shutdown)."""

    flow: UdpFlow


class TcpConnect(NamedTuple):
    """Start a non-blocking connect to (flow.host, flow.port); report `receive_tcp_connected` or
    `receive_tcp_connect_failed(errno)`. The exit answers the peer's SYN only once connected.
    With `flow.egress` set, the connection is made through that upstream proxy (and reported
    connected only once the proxy says so); never directly."""

    flow: TcpFlow


class TcpWrite(NamedTuple):
    """Write bytes to the host socket. What cannot be written at once is kept by the shell, which
    then calls `receive_tcp_write_blocked` and, once its buffer drained, `receive_tcp_writable`;
    until then the exit writes nothing more to this flow, which closes the peer's TCP window
    (backpressure)."""

    flow: TcpFlow
    data: Any  # bytes | bytearray


class TcpShutdown(NamedTuple):
    """shutdown(SHUT_WR) once everything written before has been sent: the peer sent FIN."""

    flow: TcpFlow


class TcpClose(NamedTuple):
    """Close the host socket, also aborting a connect in progress. `abort`: reset it at once
    (SO_LINGER 0, pending data discarded: the peer's side was reset); otherwise close after
    pending data has been written. An abort may follow a clean close of the same flow (its peer
    was removed while the shell was still writing): it cuts the writing short."""

    flow: TcpFlow
    abort: bool


class TcpPauseReading(NamedTuple):
    """Stop reading the host socket: the connection's send buffer toward the peer is full."""

    flow: TcpFlow


class TcpResumeReading(NamedTuple):
    """Read the host socket again, at most `Exit.tcp_read_budget(flow)` bytes at a time."""

    flow: TcpFlow


class EchoSend(NamedTuple):
    """Send an ICMP (version 4) or ICMPv6 echo request to `host` through a ping socket, with
    sequence number `seq` (the exit's own, unique among its outstanding requests to `host`) and
    `payload`; report the reply with `receive_echo_reply(version, src, seq, payload, now)`, a
    failure to send with `receive_echo_failed`. The identifier is the shell's (ping sockets impose
    their own)."""

    version: int
    host: str
    seq: int
    payload: Any  # bytes | memoryview


ACTION_TYPES = (
    UdpOpen,
    UdpSend,
    UdpClose,
    TcpConnect,
    TcpWrite,
    TcpShutdown,
    TcpClose,
    TcpPauseReading,
    TcpResumeReading,
    EchoSend,
)
