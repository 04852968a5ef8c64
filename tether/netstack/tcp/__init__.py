"""The TCP endpoint the exit terminates each peer connection with: `TcpConnection` (states,
handshake, RFC 5961/7323 checks), its sending half (`sender`: retransmission, SACK recovery,
persist), its receiving half (`receiver`: window, reassembly, ACK timing), the bounded buffers,
RTT estimation and congestion control, and the events and tunables the exit sees. Sans-IO: it
builds and parses TCP segments through `wire` and knows nothing of IP, sockets or the exit.
"""

from tether.netstack.tcp.buffers import ReassemblyQueue, SackScoreboard, SendBuffer
from tether.netstack.tcp.congestion import Cubic, NewReno, RttEstimator, make_congestion_control
from tether.netstack.tcp.connection import TcpConnection
from tether.netstack.tcp.events import (
    ConnectionClosed,
    ConnectionReset,
    DataReadable,
    Established,
    PeerEof,
    State,
    TcpConfig,
    TcpEvent,
)

__all__ = [
    "ConnectionClosed",
    "ConnectionReset",
    "Cubic",
    "DataReadable",
    "Established",
    "NewReno",
    "PeerEof",
    "ReassemblyQueue",
    "RttEstimator",
    "SackScoreboard",
    "SendBuffer",
    "State",
    "TcpConfig",
    "TcpConnection",
    "TcpEvent",
    "make_congestion_control",
]
