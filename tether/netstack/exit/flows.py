"""The flows of the exit: the state each flow table keeps per UDP flow and per TCP connection,
and what the IO shell reads from the flow an action names (`version`, `host`, `port`, and
`egress`: None for the host's own sockets, else the upstream proxy the shell must use, fixed
when the flow opens) and keeps in it (`handle`, its socket, which saves a dict lookup per
datagram). Apart from the tables so
that the actions can name them and the limits tell them apart without importing a table.
"""

from __future__ import annotations

import ipaddress

from tether.netstack.tcp import TcpConnection
from tether.netstack.wire import IPPacket, ip_wrapper

__all__ = ["TcpFlow", "UdpFlow"]


class UdpFlow:
    """One UDP flow. `handle` belongs to the IO shell (its socket); the rest to the exit."""

    reclaimable = False  # as `limits` asks of any flow: only TCP connections can be
    grant = 0  # ... and only they hold buffer grants

    __slots__ = (
        "key",
        "peer",
        "owner",
        "version",
        "src",
        "sport",
        "dst",
        "dport",
        "host",
        "port",
        "handle",
        "egress",
        "last",
        "idle",
        "replied",
        "armed",
        "closed",
    )

    def __init__(self, key, peer, owner, src, sport, dst, dport, now, idle) -> None:
        self.key = key
        self.peer = peer
        self.owner = owner
        self.version = 4 if len(dst) == 4 else 6
        self.src = src  # the peer's address and port
        self.sport = sport
        self.dst = dst  # the destination's, as the peer addressed it
        self.dport = dport
        self.host = ipaddress.ip_address(dst).compressed  # for the shell's connect()
        self.port = dport
        self.handle = None
        self.egress = peer.egress  # how the shell must send it out (never changes)
        self.last = now
        self.idle = idle
        self.replied = False
        self.armed: float | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<UdpFlow {self.sport}->{self.host}:{self.port}{' closed' if self.closed else ''}>"


class TcpFlow:
    """One proxied connection. `handle` belongs to the IO shell (its socket); `host`/`port` are
    where to connect; the rest is the exit's."""

    __slots__ = (
        "key",
        "peer",
        "owner",
        "conn",
        "version",
        "host",
        "port",
        "handle",
        "egress",
        "wrap",
        "syn",
        "armed",
        "dirty",
        "connected",
        "blocked",
        "paused",
        "shutdown_sent",
        "host_eof",
        "eof_pending",
        "host_closed",
        "closed",
        "backlog",
        "last",
        "reclaimable",
        "grant",
        "recv_level",
        "send_level",
    )

    def __init__(
        self, key, peer, owner, conn: TcpConnection, ip: IPPacket, dport: int, now: float
    ) -> None:
        self.key = key
        self.peer = peer
        self.owner = owner
        self.conn = conn
        self.version = ip.version
        self.host = ipaddress.ip_address(ip.dst).compressed
        self.port = dport
        self.handle = None
        self.egress = peer.egress  # how the shell must connect it (never changes)
        self.wrap = ip_wrapper(ip.dst, ip.src)
        # The SYN as received (headers and then some): quoted if the connect fails.
        self.syn: bytes | None = bytes(ip.raw[: ip.header_len + 60])
        self.armed: float | None = None
        self.dirty = False
        self.connected = False  # the host socket is connected
        self.blocked = False  # the shell holds unwritten data: do not write more
        self.paused = False  # the shell is not reading the host socket
        self.shutdown_sent = False
        self.host_eof = False
        self.eof_pending = False  # host EOF waits for the backlog to drain
        self.host_closed = False  # TcpClose issued
        self.closed = False  # gone from the table
        self.backlog: bytearray | None = None
        self.last = now  # the peer's last segment: eviction picks the least recently active
        self.reclaimable = False  # delivered everything; droppable to make room (`limits`)
        self.grant = 0  # buffer bytes reserved for it; the sizes are the configured ones
        self.recv_level = 0  # shifted right by these levels
        self.send_level = 0

    def __repr__(self) -> str:
        return f"<TcpFlow ->{self.host}:{self.port} {self.conn.state.value}>"
