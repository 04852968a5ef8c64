"""What the exit's IO shell keeps in a TCP flow's `handle`: its host socket and the state of
reading and writing it. Apart from `shell` so that the upstream-proxy part of the shell
(`egress`), which makes these sockets for proxied flows, needs nothing else of it."""

from __future__ import annotations

import socket

__all__ = ["TcpSock"]


class TcpSock:
    """The shell's side of one TCP flow (kept in `flow.handle`). While `connecting`, the socket
    is not the flow's yet: a connect is in progress, or (`setup` set) the upstream proxy is
    still being asked to make the connection; nothing is read for the exit or written then."""

    __slots__ = ("sock", "fd", "pending", "connecting", "reading", "eof", "shutdown_after",
                 "close_after", "closed", "setup")  # fmt: skip

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pending: bytearray | None = None  # unwritten bytes; a writer is registered
        self.connecting = False
        self.reading = False
        self.eof = False
        self.shutdown_after = False  # shutdown(SHUT_WR) once pending is written
        self.close_after = False  # close once pending is written
        self.closed = False
        self.setup = None  # the SOCKS negotiation in progress (egress), with its timer
