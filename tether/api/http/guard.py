"""waitress, hardened against clients that hold connections without finishing requests.

Stock waitress stops accepting once `connection_limit` connections are open and closes an idle
one only after `channel_timeout` of silence, so 400 half-sent requests from one address (or a
slowloris that trickles a byte now and then, or simply reconnects) keep everyone else out. This
module changes three things, using only waitress' public extension points (the server's
`channel_class`, `handle_accept`, `readable` and `maintenance`, as webtest and others subclass
them):

- a per-client connection cap (IPv4 address, IPv6 /64; trusted proxies exempt, as every client
  behind them shares their address): connections over it are closed right after accept;
- a request deadline: a connection that is not being served must deliver a complete request
  head within `request_timeout` of its last response (or of connecting), however slowly it
  trickles bytes; otherwise it is closed;
- when the connection limit is reached, the server keeps accepting and closes the connection
  that has waited longest without a request being served, instead of refusing newcomers: an
  attacker's held connections make way for a real request, which arrives in one packet.

A closed connection is closed through waitress' own `will_close` flag, in the I/O loop, so no
file descriptor is reused while the loop may still hold events for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from tether.api.http import access

log = logging.getLogger("tether.api")

DEFAULT_PER_CLIENT = 16
DEFAULT_REQUEST_TIMEOUT = 10.0


class GuardedChannel(HTTPChannel):
    """waitress' connection, counted per client and timed per request, so that the server can
    cap and evict connections that never finish a request."""

    def __init__(self, server, sock, addr, adj, map=None):
        self.client_key = server.key_of(addr)
        self._counted = False
        super().__init__(server, sock, addr, adj, map)
        self.waiting_since = self.creation_time
        server.clients[self.client_key] += 1
        self._counted = True

    def service(self):
        """Serve the request; the wait for the next one starts afresh afterwards."""
        self.waiting_since = time.time()  # a long request must not count against the next one
        try:
            super().service()
        finally:
            self.waiting_since = time.time()  # the next request's deadline starts now

    def idle(self) -> bool:
        """Not serving a request: only waiting for (or receiving) the next one."""
        return not self.requests

    def del_channel(self, map=None):
        """Closing frees the connection's slot in its client's count."""
        super().del_channel(map)
        if self._counted:
            self._counted = False
            clients = self.server.clients
            clients[self.client_key] -= 1
            if clients[self.client_key] <= 0:
                del clients[self.client_key]


class GuardedServer(TcpWSGIServer):
    """waitress' server with the slowloris defences: a per-client connection cap, a request
    deadline and eviction of the longest-waiting connection when all slots are taken."""

    channel_class = GuardedChannel

    def __init__(
        self,
        application,
        socket_map: dict,
        *args,
        per_client: int = DEFAULT_PER_CLIENT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        exempt: tuple = (),
        **kw,
    ):
        self.per_client = per_client
        self.request_timeout = request_timeout
        self.exempt = tuple(exempt)
        self.clients: Counter[str] = Counter()
        self.refused = 0  # connections closed at accept (over the per-client cap, or full)
        self.evicted = 0  # waiting connections closed to make room
        self.timed_out = 0  # connections closed for not sending a request in time
        self.socket_map = socket_map  # where new channels register (the loop's map)
        super().__init__(application, socket_map, *args, **kw)

    def key_of(self, addr) -> str | None:
        """The cap's bucket for a peer address; None for a trusted proxy (no cap)."""
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        parsed = access.parse_address(host)
        if parsed is not None and any(parsed in net for net in self.exempt):
            return None
        return access.client_key(parsed)

    def readable(self):
        """Run maintenance on schedule, and keep accepting even when full: handle_accept makes
        room instead of letting idle connections lock newcomers out."""
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        return self.accepting  # never stop accepting: handle_accept makes room instead

    def handle_accept(self):
        """Accept, then refuse over the client's cap, or make room by evicting a waiting
        connection."""
        try:
            pair = self.accept()
            if pair is None:
                return
            conn, addr = pair
            self.set_socket_options(conn)
        except OSError:
            return
        key = self.key_of(addr)
        if key is not None and self.clients[key] >= self.per_client:
            self.refused += 1
            conn.close()
            return
        if self._open() >= self.adj.connection_limit and not self._evict_one():
            self.refused += 1
            conn.close()
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self.socket_map)

    def _open(self) -> int:
        return sum(1 for ch in self.active_channels.values() if not ch.will_close)

    def _evict_one(self) -> bool:
        waiting = [ch for ch in self.active_channels.values() if ch.idle() and not ch.will_close]
        if not waiting:
            return False
        victim = min(waiting, key=lambda ch: ch.waiting_since)
        victim.will_close = True
        self.evicted += 1
        return True

    def maintenance(self, now):
        """waitress' idle cleanup plus the request deadline: a connection that has not delivered
        a complete request in time is closed, however slowly it trickles."""
        super().maintenance(now)
        cutoff = now - self.request_timeout
        for ch in self.active_channels.values():
            if (
                ch.idle()
                and not ch.will_close
                and not ch.total_outbufs_len
                and ch.waiting_since < cutoff
            ):
                ch.will_close = True
                self.timed_out += 1
