"""The exit shell's upstream proxies (DESIGN.md §3a, `Egress = socks5://...`): how flows whose
egress is a proxy leave the host, and how the shell knows whether a proxy works.

The sans-IO exit decides which flows go through which proxy (`Exit.set_egress`, from the peer
key, after its policy judged the destination) and hands each flow's `Proxy` over on the flow
(`flow.egress`). Here the shell carries that out, on the device's loop, with the exit's
`SocksClient` (tether.netstack.exit.socks) speaking the protocol:

- TCP: a connection to the proxy, the SOCKS5 negotiation (user name and password when the
  Egress has them) and CONNECT; only once the proxy reports success does the exit hear
  `receive_tcp_connected` and answer the peer's SYN. From then on the socket is an ordinary
  flow socket of the shell (the same reading, writing and backpressure as a direct one), so
  throughput through the proxy is what the proxy manages.
- UDP: one association per flow (UDP ASSOCIATE): a control connection to the proxy and a UDP
  socket that talks to its relay, each datagram wrapped in the SOCKS header. A flow per
  association keeps what a direct flow gives: the destination sees one source port per flow,
  replies are matched to the flow (and only datagrams from its destination are let through),
  and the flow limits and idle expiry of direct flows bound them. The proxy ending the
  association (its control connection closing) ends the flow (`receive_udp_closed`). Up to
  UDP_QUEUE datagrams wait while the association is made; more are dropped, as a link drops
  what an ARP lookup holds beyond its queue.

Fail closed: nothing here ever opens a socket toward a flow's destination. A proxy that cannot
be reached, refuses the credentials, breaks the protocol or does not answer within
NEGOTIATION_TIMEOUT fails the flow with ENETUNREACH (the peer gets ICMP network unreachable, a
hard error for its connect), and is marked down (`proxy.Proxy`: flows fail at once while
it is, probes bring it back, `status` is the `tetherctl_egress_up` gauge); a reply code fails
the flow as the matching direct failure would (RST for "refused", ICMP unreachable or
administratively prohibited). Once the proxy has accepted us, a CONNECT that waits is waiting
for the destination: it gets the direct connect timeout and fails only its flow (ETIMEDOUT, ICMP
host unreachable), so a peer connecting to hosts that drop SYNs cannot mark the proxy down for
everyone. A proxied flow to the proxy's own address is refused (administratively prohibited), as
the exit refuses the host's own addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping

from tether.config.egress import Egress
from tether.device.exit.proxy import Negotiation, Proxy, is_ip, open_socket
from tether.device.exit.sockets import TcpSock
from tether.device.resolve import Resolver
from tether.netstack.exit.socks import (
    CONNECT,
    PROXY_DOWN,
    UDP_ASSOCIATE,
    SocksClient,
    SocksFailed,
    parse_udp_datagram,
    udp_header,
)

__all__ = ["Egresses", "UdpRelay"]

log = logging.getLogger("tether.exit")

NEGOTIATION_TIMEOUT = 10.0  # connect to the proxy, authentication, and UDP ASSOCIATE's answer
UDP_QUEUE = 16  # datagrams a flow holds while its association is made
UDP_BATCH = 64
_READ = 4096


def to_proxy_host(destination: str | bytes, proxy_address: tuple[str, int]) -> bool:
    """Whether a proxied flow asks the proxy to connect to the proxy's own address. The exit
    refuses the host's own addresses because a connection from the host to itself reaches
    services (and firewall exceptions) meant for the host alone; through a proxy the same holds
    for the proxy's host. Refused as the policy would (EACCES: administratively prohibited).
    Loopback is left to the policy, which refuses it unless the operator allowed local access."""
    try:
        dst = ipaddress.ip_address(destination)
        own = ipaddress.ip_address(proxy_address[0].partition("%")[0])
    except ValueError:
        return False
    return dst == own and not own.is_loopback


class UdpRelay:
    """The shell's side of one proxied UDP flow (its `handle`): the association's control
    connection, the socket toward the relay, and datagrams waiting for the association."""

    __slots__ = ("control", "udp", "setup", "header", "queue", "ready", "closed")

    def __init__(self, header: bytes) -> None:
        self.control: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.setup: Negotiation | None = None
        self.header = header  # RFC 1928 §7's, toward the flow's destination
        self.queue: list[bytes] = []
        self.ready = False
        self.closed = False


class Egresses:
    """The shell's proxies and the proxied flows in the making (module docstring). The shell
    sets the egress (`set_default`, `set_per_peer`), hands over proxied flows' actions
    (`connect_tcp`, `open_udp`, `send_udp`, `close_udp`, `forget_tcp`), and reads `status`."""

    def __init__(
        self,
        shell,
        *,
        name: str,
        resolver: Resolver,
        live: set,
        host_input: Callable[[], None],
        tcp_ready: Callable,
        datagrams,
    ) -> None:
        self.loop = shell.loop
        self.datagrams = datagrams  # the shell's DatagramSockets: relays' UDP sockets go there
        self.exit = shell.exit
        self.name = name
        self.resolver = resolver
        self.live = live  # the shell's flows holding host sockets
        self.host_input = host_input
        self.tcp_ready = tcp_ready  # (flow, leftover bytes): the proxy connected the flow
        self.proxies: dict[Egress, Proxy] = {}
        self._default: Egress | None = None
        self._per_peer: Mapping[bytes, Egress] = {}
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self.dropped = 0  # datagrams from a relay not from the flow's destination, or queued over

    # -- configuration -----------------------------------------------------------------------

    def set_default(self, egress: Egress | None) -> None:
        """The device's egress (`[Exit]`; None or direct: the host's own sockets)."""
        self._default = egress
        self._apply()

    def set_per_peer(self, per_peer: Mapping[bytes, Egress]) -> None:
        """The peers' overrides (`[Peer]` Egress; direct is an override too)."""
        self._per_peer = dict(per_peer)
        self._apply()

    def _apply(self) -> None:
        """Tell the exit, for new flows; proxies configured before keep their state, new ones
        are probed at once, those no longer named stop their background work."""
        wanted = {e for e in (self._default, *self._per_peer.values()) if e and not e.is_direct}
        for egress in [e for e in self.proxies if e not in wanted]:
            self.proxies.pop(egress).close()
        fresh = []
        for egress in wanted:
            if egress not in self.proxies:
                fresh.append(self.proxies.setdefault(egress, Proxy(egress, self)))

        def pick(egress: Egress | None) -> Proxy | None:
            return None if egress is None or egress.is_direct else self.proxies[egress]

        self.exit.set_egress(
            pick(self._default),
            {key: pick(e) for key, e in self._per_peer.items()},
            time.monotonic(),
        )
        for proxy in fresh:
            proxy.probe()

    @property
    def in_use(self) -> bool:
        """Whether any flow may go through a proxy (a proxied UDP flow holds two sockets)."""
        return bool(self.proxies)

    def status(self) -> dict[str, bool]:
        """Per configured proxy (by label) whether it works; those not tried yet are left out."""
        return {p.label: p.up for p in self.proxies.values() if p.up is not None}

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies.clear()

    # -- TCP ---------------------------------------------------------------------------------

    def connect_tcp(self, flow) -> None:
        """`TcpConnect` of a proxied flow: through the proxy, or a failure; never directly."""
        proxy: Proxy = flow.egress
        if not proxy.may_try(time.monotonic()):
            self.exit.receive_tcp_connect_failed(flow, PROXY_DOWN, time.monotonic())
            return
        proxy.when_resolved(flow, lambda address, reason: self._tcp_at(flow, address, reason))

    def forget_tcp(self, flow) -> None:
        """The exit closed a proxied flow that has no socket yet (its proxy is being looked up)."""
        flow.egress.forget(flow)

    def _tcp_at(self, flow, address, reason) -> None:
        proxy: Proxy = flow.egress
        now = time.monotonic()
        if address is None:
            self.exit.receive_tcp_connect_failed(flow, PROXY_DOWN, now)
            return
        if to_proxy_host(flow.host, address):
            self.exit.receive_tcp_connect_failed(flow, errno.EACCES, now)
            return
        sock = None
        try:
            sock = open_socket(address, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            if sock is not None:
                sock.close()
            self.exit.receive_tcp_connect_failed(flow, e.errno or errno.EIO, now)
            return
        h = flow.handle = TcpSock(sock)
        h.connecting = True
        self.live.add(flow)
        client = SocksClient(
            CONNECT, flow.host, flow.port, proxy.credentials, now, timeout=NEGOTIATION_TIMEOUT,
            connect_timeout=self.exit.config.tcp.connect_timeout,
        )  # fmt: skip
        h.setup = Negotiation(self.loop, sock, client, lambda r: self._tcp_done(flow, r))
        h.setup.start(address)

    def _tcp_done(self, flow, result) -> None:
        h = flow.handle
        h.setup = None
        proxy: Proxy = flow.egress
        now = time.monotonic()
        if isinstance(result, SocksFailed):
            if result.proxy_fault:
                proxy.failed(result.reason, now)
            else:
                proxy.succeeded()
                log.debug("%s: egress %s: %s:%d: %s", self.name, proxy.label, flow.host,
                          flow.port, result.reason)  # fmt: skip
            self.exit.receive_tcp_connect_failed(flow, result.err, now)
        else:
            proxy.succeeded()
            h.connecting = False
            self.tcp_ready(flow, result.leftover)
        self.host_input()

    # -- UDP ---------------------------------------------------------------------------------

    def open_udp(self, flow) -> None:
        """`UdpOpen` of a proxied flow: an association of its own (module docstring)."""
        proxy: Proxy = flow.egress
        if not proxy.may_try(time.monotonic()):
            self.exit.receive_udp_open_failed(flow, PROXY_DOWN, time.monotonic())
            return
        flow.handle = UdpRelay(udp_header(flow.dst, flow.dport))
        self.live.add(flow)
        proxy.when_resolved(flow, lambda address, reason: self._udp_at(flow, address))

    def _udp_at(self, flow, address) -> None:
        relay: UdpRelay = flow.handle
        if relay is None or relay.closed:
            return
        proxy: Proxy = flow.egress
        now = time.monotonic()
        if address is None:
            self._udp_failed(flow, PROXY_DOWN)
            return
        if to_proxy_host(flow.dst, address):
            self._udp_failed(flow, errno.EACCES)
            return
        try:
            relay.udp = open_socket(address, socket.SOCK_DGRAM)
            # a UDP connect sends nothing: it binds the socket to the address and port the
            # datagrams toward the proxy will come from, which the request must name (dante
            # relays only what comes from the address the client declared)
            relay.udp.connect(address)
            relay.control = open_socket(address, socket.SOCK_STREAM)
        except OSError as e:
            self._udp_failed(flow, e.errno or errno.EIO)
            return
        source, port = relay.udp.getsockname()[:2]
        client = SocksClient(
            UDP_ASSOCIATE, source, port, proxy.credentials, now, timeout=NEGOTIATION_TIMEOUT
        )
        relay.setup = Negotiation(
            self.loop, relay.control, client, lambda r: self._udp_done(flow, r, address)
        )
        relay.setup.start(address)

    def _udp_done(self, flow, result, proxy_address) -> None:
        relay: UdpRelay = flow.handle
        relay.setup = None
        proxy: Proxy = flow.egress
        if isinstance(result, SocksFailed):
            if result.proxy_fault:
                proxy.failed(result.reason, time.monotonic())
            else:
                proxy.succeeded()
            self._udp_failed(flow, result.err)
            self.host_input()
            return
        proxy.succeeded()
        host, port = result.bound
        if not is_ip(host) or host in ("0.0.0.0", "::"):
            host = proxy_address[0]  # "the relay is where you reached me" (or a name: same)
        try:
            relay.udp.connect((host, port))
        except OSError as e:
            self._udp_failed(flow, e.errno or errno.EIO)
            self.host_input()
            return
        relay.ready = True
        self.datagrams.add(relay.udp.fileno(), self._udp_readable, flow)
        # the control connection carries nothing more: data or its end ends the association
        self.loop.add_reader(relay.control.fileno(), self._control_readable, flow)
        queue, relay.queue = relay.queue, []
        for payload in queue:
            self._relay_send(flow, relay, payload)
        self.host_input()

    def _udp_failed(self, flow, err: int) -> None:
        self.exit.receive_udp_open_failed(flow, err, time.monotonic())

    def send_udp(self, flow, payload) -> None:
        """`UdpSend` of a proxied flow: wrapped for the relay, or held until it is ready."""
        relay: UdpRelay | None = flow.handle
        if relay is None or relay.closed:
            return
        if relay.ready:
            self._relay_send(flow, relay, payload)
        elif len(relay.queue) < UDP_QUEUE:
            relay.queue.append(bytes(payload))
        else:
            self.dropped += 1

    def _relay_send(self, flow, relay: UdpRelay, payload) -> None:
        try:
            relay.udp.sendmsg((relay.header, payload))
        except OSError as e:
            self.exit.receive_udp_error(flow, e.errno or errno.EIO, time.monotonic())

    def _udp_readable(self, flow) -> None:
        relay: UdpRelay | None = flow.handle
        if relay is None or relay.closed:
            return
        buf, view, ex = self._buf, self._view, self.exit
        now = time.monotonic()
        for _ in range(UDP_BATCH):
            try:
                n = relay.udp.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error about the relay: not the destination's to report
                continue
            try:
                d = parse_udp_datagram(view[:n])
            except ValueError:
                self.dropped += 1
                continue
            if d.frag or d.addr != flow.dst or d.port != flow.dport:
                self.dropped += 1  # fragments, and anyone but the flow's destination
                continue
            ex.receive_udp_datagram(flow, view[d.offset : n], now)
        self.host_input()

    def _control_readable(self, flow) -> None:
        relay: UdpRelay | None = flow.handle
        if relay is None or relay.closed:
            return
        try:
            data = relay.control.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            return  # nothing is expected here; ignoring it keeps the association
        self.loop.remove_reader(relay.control.fileno())
        self.exit.receive_udp_closed(flow, time.monotonic())
        self.host_input()

    def close_udp(self, flow) -> None:
        """`UdpClose` of a proxied flow: the association and its sockets end."""
        relay: UdpRelay | None = flow.handle
        self.live.discard(flow)
        if relay is None:
            return
        flow.handle = None
        relay.closed = True
        flow.egress.forget(flow)
        if relay.setup is not None:
            relay.setup.cancel()
        if relay.udp is not None:
            self.datagrams.remove(relay.udp.fileno())
            relay.udp.close()
        if relay.control is not None:
            try:
                self.loop.remove_reader(relay.control.fileno())
            except (ValueError, RuntimeError):
                pass
            relay.control.close()
