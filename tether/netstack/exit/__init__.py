"""The exit: what turns peers' decrypted IP packets into host-socket actions and the host's
answers back into packets for the peers. `Exit` (in `core`) dispatches each packet by the
destination `policy`'s verdict to the flow tables (TCP through a `TcpConnection` per flow, UDP
through a connected socket per flow, ICMP echo through ping sockets), all within the fair
`limits`; the tables keep their `flows` and write into the exit's `output`. The IO shell
executes the `actions` it takes from the exit and reports what the host did back. Builds on
`wire` (formats) and `tcp` (the endpoint); sans-IO like both.

Inside the package the modules stack as: config, output, flows → actions, limits, policy →
the tables → core; none imports one above it.
"""

from tether.netstack.exit.actions import (
    ACTION_TYPES,
    EchoSend,
    TcpClose,
    TcpConnect,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
    UdpClose,
    UdpOpen,
    UdpSend,
)
from tether.netstack.exit.config import ExitConfig
from tether.netstack.exit.core import Exit
from tether.netstack.exit.flows import TcpFlow, UdpFlow
from tether.netstack.exit.limits import START_BUFFER, PeerState
from tether.netstack.exit.policy import (
    DROP,
    HOST,
    OWN,
    PEER,
    REFUSE,
    VERDICT_NAMES,
    ExitPolicy,
    decrement_ttl,
)
from tether.netstack.exit.tcp_table import READ_CHUNK

__all__ = [
    "ACTION_TYPES",
    "DROP",
    "HOST",
    "OWN",
    "PEER",
    "READ_CHUNK",
    "REFUSE",
    "START_BUFFER",
    "VERDICT_NAMES",
    "EchoSend",
    "Exit",
    "ExitConfig",
    "ExitPolicy",
    "PeerState",
    "TcpClose",
    "TcpConnect",
    "TcpFlow",
    "TcpPauseReading",
    "TcpResumeReading",
    "TcpShutdown",
    "TcpWrite",
    "UdpClose",
    "UdpFlow",
    "UdpOpen",
    "UdpSend",
    "decrement_ttl",
]
