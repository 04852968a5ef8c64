"""The exit's IO shell: host sockets on the device's asyncio loop, driven by the sans-IO `Exit`.

    Device(name, ..., inside_factory=ExitShell)                                  # defaults
    Device(name, ..., inside_factory=functools.partial(ExitShell, allow_local=True))
    Device(name, ..., exit_settings=config.exit, inside_factory=functools.partial(
        ExitShell, public_addresses=["203.0.113.7"]))   # [Exit], --public-ipv4/-ipv6

It implements the device's `Inside` protocol (inside.py) and is made from an `InsideContext`,
never from the device itself. The exit's actions (open a socket, write, close...) are executed
where the input that caused them arrives: in `receive_packets` (one batch of packets from
peers, so the exit's per-flow work is done once per batch), in `handle_timer`, in `forget_peer`
and the other settings, and in each host-socket callback. The
device then takes the resulting packets toward peers (`take_packets`, which touches no socket).
Host sockets report through plain `loop.add_reader`/`add_writer` callbacks (no Task, no Future,
no transport objects per packet); each callback reads in a bounded batch, feeds the exit, runs
the actions, and calls the context's `wake()`, which has the device collect the exit's packets
and next timer once per loop iteration however many sockets reported in it.

Sockets: a connected non-blocking UDP socket per UDP flow; a non-blocking TCP socket per TCP
flow (tcp_host.py; TCP_NODELAY: the exit already coalesces per batch, and the peer does its own
Nagle); one
ping socket per address family for all echo requests (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed when
`net.ipv4.ping_group_range` includes our group; as root without it, a raw socket).

The host's own addresses, which the policy refuses by default, are read from /proc/net/fib_trie
and /proc/net/if_inet6 (no netlink library, no subprocess, no packets) and re-read every 30 s;
the public ones the operator named come in as `public_addresses`. The device's `[Exit]` section
(`device.exit_settings`) gives the destination rules, live through `set_exit`, and the limits
that have an `ExitConfig` field (MaxFlows, MaxBufferPerPeer) when the exit is made.

Flows whose egress is an upstream proxy (`Egress = socks5://...` in `[Exit]` or a `[Peer]`) are
handed to `egress` when they open; once the proxy has connected a TCP flow, its socket is
an ordinary flow socket here. Nothing in this module opens a socket toward the destination of a
proxied flow.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import replace

from tether import keys
from tether.device.exit.datagrams import DatagramSockets
from tether.device.exit.egress import Egresses
from tether.device.exit.host import (
    Pinger,
    discover_host_addresses,
    limits_from,
    raise_nofile_limit,
)
from tether.device.exit.sockets import TcpSock
from tether.device.exit.tcp_host import HostTcp
from tether.device.inside import InsideContext
from tether.device.resolve import Resolver
from tether.netstack.exit import (
    EchoSend,
    Exit,
    ExitConfig,
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
from tether.netstack.wire import is_datagram

log = logging.getLogger("tether.exit")

UDP_BATCH = 64  # datagrams read per readable callback
ANSWER_POLL = 8  # TCP segments of a batch between two reads of the datagram sockets
HOST_ADDRESS_REFRESH = 30.0
_FD_RESERVE = 256  # descriptors kept for everything that is not a flow
_IP_MTU = getattr(socket, "IP_MTU", 14)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)


class ExitShell:
    """`Inside` for a `Device`: proxies peers' traffic through host sockets (module docstring)."""

    def __init__(
        self,
        context: InsideContext,
        *,
        allow_local: bool = False,
        config: ExitConfig | None = None,
        mtu: int | None = None,
        host_addresses: tuple | None = None,
        public_addresses=(),
        resolver=socket.getaddrinfo,
    ) -> None:
        """`resolver` (getaddrinfo's signature) resolves upstream proxies given by name, in a
        thread (see `tether.device.resolve`)."""
        self.context = context
        self.loop = context.loop
        settings = context.exit_settings
        self._base = config or ExitConfig()
        self._fd_cap = raise_nofile_limit() - _FD_RESERVE
        cfg = replace(self._base, **limits_from(settings, self._base, self._fd_cap))
        if mtu is None:
            mtu = context.mtu
        self.exit = Exit(
            list(context.addresses),
            mtu=mtu,
            allow_local=allow_local,
            public_addresses=public_addresses,
            config=cfg,
        )
        self._udp_buf = bytearray(65536)
        self._udp_view = memoryview(self._udp_buf)
        self._pingers: dict[int, Pinger | None] = {}
        self._live: set = set()  # flows holding a host socket
        self._in_actions = False
        self._polled = False  # inside `poll`: the device collects itself, no wake needed
        self._polled_since_ready = False  # the device drained the set since the loop's reader
        self.closed = False
        self._datagrams = DatagramSockets(self.loop, self._datagrams_ready)
        self._settings = settings
        self._tcp = tcp = HostTcp(self.loop, self.exit, self._live, self._host_input)
        self._egress = tcp.egress = Egresses(
            self,
            name=context.name,
            resolver=Resolver(resolver),
            live=self._live,
            host_input=self._host_input,
            tcp_ready=tcp.through_proxy,
            datagrams=self._datagrams,
        )
        self._handlers = {
            UdpOpen: self._udp_open,
            UdpSend: self._udp_send,
            UdpClose: self._udp_close,
            TcpConnect: tcp.connect,
            TcpWrite: tcp.write,
            TcpShutdown: tcp.shutdown,
            TcpClose: tcp.close,
            TcpPauseReading: tcp.pause,
            TcpResumeReading: tcp.resume,
            EchoSend: self._echo_send,
        }
        if settings is not None:
            self.set_exit(settings)
        self._static_host = host_addresses
        self._refresh: object | None = None
        self._refresh_host_addresses()

    # -- Inside ------------------------------------------------------------------------------

    def receive_packets(
        self, packets: list[tuple[bytes, bytes]], now: float, queue_delay: float | None = None
    ) -> None:
        """Inside: a batch of packets from peers; the host actions they cause run at once.

        Datagrams (ICMP, UDP: `is_datagram`) are served before the batch's TCP segments, and
        their host sends leave before the segments' work starts, as fq_codel serves sparse
        flows first: a ping or a DNS query next to an upload would otherwise wait for every
        segment ahead of it to be parsed, reassembled and written. Each class keeps its order
        and a flow's packets are all in one class (`is_datagram` decides a fragment as its
        whole; a flow that puts IPv6 destination options on some packets only is the one way to
        be in both), so nothing is reordered within a flow.

        The host answers while the segments are worked on: while the batch brought datagrams or
        the exit awaits answers to earlier ones (`Exit.awaits_datagrams`: a game's or a call's
        far end answers milliseconds later, in the middle of some other batch), the datagram
        sockets are read every `ANSWER_POLL` segments and what they brought is sent at once
        (`InsideContext.send_now`) instead of after the whole batch and its segments'
        encryption (on a download, a burst of them). Once per batch: a host-side flood gets
        one more turn per batch, not one per `ANSWER_POLL` segments. What the host side fed
        the exit meanwhile (an answer, a failed send's error) was stamped later than the
        batch: the segments after it get a fresh clock, as the exit's must not step back."""
        if queue_delay is not None:
            self.exit.receive_queue_delay(queue_delay, now)
        deliver = self.exit.receive_packet
        segments = []
        for item in packets:
            if is_datagram(item[1]):
                deliver(item[0], item[1], now)
            else:
                segments.append(item)
        waiting = False
        if segments:
            if len(segments) < len(packets):
                waiting = True
                self._run_actions()
                now = time.monotonic()  # a failed host send fed the exit a later clock
            else:
                waiting = self.exit.awaits_datagrams()
        for i, (peer_key, packet) in enumerate(segments, 1):
            deliver(peer_key, packet, now)
            if waiting and i % ANSWER_POLL == 0 and self._answer_now():
                waiting = False
                now = time.monotonic()  # what the poll fed the exit was stamped later
        self._run_actions()
        if waiting:
            self._answer_now()

    def _answer_now(self) -> bool:
        """Read the datagram sockets now; send what the exit answered at once (or leave it to
        the device's collection when it has no `send_now`). Whether any socket was ready."""
        if not self.poll():
            return False
        send_now = self.context.send_now
        if send_now is not None:
            first = self.exit.take_first()
            if first:
                send_now(first)
        return True

    def poll(self) -> bool:
        """Inside: read the ping sockets and UDP flows that are ready (datagrams.py), before
        the device reads its next batch; whether any was (the device then collects at once)."""
        self._polled = self._polled_since_ready = True
        try:
            return self._datagrams.run_ready() > 0
        finally:
            self._polled = False

    def take_packets(self) -> list[bytes]:
        """Inside: the exit's packets toward peers (no host socket is touched here)."""
        return self.exit.take_packets()

    def next_timer(self) -> float | None:
        """Inside: the exit's next timer."""
        return self.exit.next_timer()

    def handle_timer(self, now: float) -> None:
        """Inside: run the exit's timers (retransmissions, idle flows) and their actions."""
        self.exit.handle_timer(now)
        self._run_actions()

    def set_mtu(self, mtu: int) -> None:
        """Inside: the tunnel MTU changed (the exit's segment sizes follow)."""
        self.exit.set_mtu(mtu)
        self._run_actions()

    def set_addresses(self, addresses) -> None:
        """Inside: the device's own addresses changed (they answer ping; the subnet is peers)."""
        self.exit.set_addresses(addresses)
        self._run_actions()

    def set_exit(self, settings) -> None:
        """The `[Exit]` section (an ExitSettings), applied at once: its destination rules to
        every packet from now on (a connection already open to a destination that is now
        refused keeps running until it ends, see `Exit.set_rules`), its limits to every new flow
        and grant (see `Exit.set_limits` for holdings above a lowered limit)."""
        self.exit.set_rules(
            settings.allow_destinations, settings.deny_destinations, settings.peer_to_peer
        )
        self._egress.set_default(settings.egress)
        self._settings = settings
        self._set_limits()
        self._run_actions()

    def set_peer_egress(self, per_peer) -> None:
        """Inside: the peers' own `Egress` (public key → Egress; direct is an override too),
        for their new flows."""
        self._egress.set_per_peer(per_peer)
        self._set_limits()
        self._run_actions()

    def _set_limits(self) -> None:
        """The limits of `[Exit]`; while any flow may go through a proxy, the descriptor cap
        on flows is halved (a proxied UDP flow holds a control connection and a socket)."""
        cap = self._fd_cap // 2 if self._egress.in_use else self._fd_cap
        self.exit.set_limits(**limits_from(self._settings, self._base, cap))

    def egress_status(self) -> dict[str, bool]:
        """Inside: whether each upstream proxy in use works (by its label, no password)."""
        return self._egress.status()

    def forget_peer(self, peer_key: bytes, now: float, keep=None) -> None:
        """The peer was removed or lost addresses: its flows end now (`Exit.forget_peer`) and
        their host sockets close at once."""
        n = self.exit.forget_peer(peer_key, now, keep)
        self._run_actions()
        if n:
            what = "was removed" if keep is None else "lost addresses"
            log.info("exit: peer %s %s: ended %d exit flows", keys.encode(peer_key), what, n)

    def counters(self) -> dict[str, int]:
        """Open flows by protocol, for metrics."""
        counts = self.exit.counters()
        return {"udp_flows": counts["udp_flows"], "tcp_flows": counts["tcp_flows"]}

    def refusals(self) -> dict[bytes, int]:
        """Packets refused by policy, per peer public key."""
        return self.exit.refusals()

    def close(self) -> None:
        """Inside: the device goes down; every host socket is closed (TCP ones reset)."""
        if self.closed:
            return
        self.closed = True
        if self._refresh is not None:
            self._refresh.cancel()
        self.exit.close()
        self._egress.close()
        for flow in list(self._live):
            h = flow.handle
            if isinstance(h, TcpSock):
                self._tcp.close_flow(flow, abort=True)
            elif h is not None:
                self._udp_close(UdpClose(flow))
        for p in self._pingers.values():
            if p is not None:
                p.close()
        self._pingers.clear()
        self._datagrams.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _refresh_host_addresses(self) -> None:
        if self._static_host is not None:
            local, broadcast = self._static_host
        else:
            local, broadcast = discover_host_addresses()
            self._refresh = self.loop.call_later(HOST_ADDRESS_REFRESH, self._refresh_host_addresses)
        self.exit.set_host_addresses(local, broadcast)

    def _run_actions(self) -> None:
        """Execute the exit's actions until it has none. An action whose outcome is known at
        once (a failed connect or send) feeds the exit, which may add actions: those run in
        the same drain, after the batch that caused them."""
        if self._in_actions:
            return  # called from inside a handler: the drain below picks them up
        ex = self.exit
        handlers = self._handlers
        self._in_actions = True
        try:
            while actions := ex.take_actions():
                for a in actions:
                    handlers[type(a)](a)
        finally:
            self._in_actions = False

    def _host_input(self) -> None:
        """A host socket fed the exit: run what it caused, and have the device collect the
        exit's packets and timer (once per loop iteration, however many sockets report)."""
        self._run_actions()
        if not self.closed and not self._polled:
            self.context.wake()

    def _datagrams_ready(self) -> None:
        """The loop's reader of the datagram set, for when the device's socket is quiet.

        When the device polled since this last ran, its socket is busy and it drains the set
        before each batch: draining here too would give host datagrams two turns per batch of
        the tunnel (add_reader gave each socket one per loop iteration). That turn is skipped
        once; if the device has gone quiet, the set is still readable and the loop's next
        iteration serves it here."""
        if self._polled_since_ready:
            self._polled_since_ready = False
            return
        self._datagrams.run_ready()

    # -- UDP ---------------------------------------------------------------------------------

    def _udp_open(self, a: UdpOpen) -> None:
        flow = a.flow
        if flow.egress is not None:
            self._egress.open_udp(flow)
            return
        fam = socket.AF_INET if flow.version == 4 else socket.AF_INET6
        sock = None
        try:
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((flow.host, flow.port))
        except OSError as e:
            if sock is not None:
                sock.close()
            self.exit.receive_udp_open_failed(flow, e.errno or errno.EIO, time.monotonic())
            return
        flow.handle = sock
        self._live.add(flow)
        self._datagrams.add(sock.fileno(), self._udp_readable, flow)

    def _udp_send(self, a: UdpSend) -> None:
        if a.flow.egress is not None:
            self._egress.send_udp(a.flow, a.payload)
            return
        sock = a.flow.handle
        if sock is None:
            return
        try:
            sock.send(a.payload)
        except (BlockingIOError, InterruptedError) as e:  # buffer full: dropped, and counted
            self.exit.receive_udp_error(a.flow, e.errno, time.monotonic())
        except OSError as e:
            mtu = 0
            if e.errno == errno.EMSGSIZE:
                mtu = self._path_mtu(sock, a.flow.version)
            self.exit.receive_udp_error(a.flow, e.errno, time.monotonic(), mtu)

    @staticmethod
    def _path_mtu(sock: socket.socket, version: int) -> int:
        try:
            if version == 4:
                return sock.getsockopt(socket.IPPROTO_IP, _IP_MTU)
            return sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
        except OSError:
            return 0

    def _udp_readable(self, flow) -> None:
        sock = flow.handle
        if sock is None:
            return
        buf, view, ex = self._udp_buf, self._udp_view, self.exit
        now = time.monotonic()
        for _ in range(UDP_BATCH):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # an ICMP error that came back for this flow
                ex.receive_udp_error(flow, e.errno, now)
                continue
            ex.receive_udp_datagram(flow, view[:n], now)
        self._host_input()

    def _udp_close(self, a: UdpClose) -> None:
        flow = a.flow
        if flow.egress is not None:
            self._egress.close_udp(flow)
            return
        sock = flow.handle
        self._live.discard(flow)
        if sock is None:
            return
        flow.handle = None
        self._datagrams.remove(sock.fileno())
        sock.close()

    # -- ICMP echo ---------------------------------------------------------------------------

    def _echo_send(self, a: EchoSend) -> None:
        pinger = self._pingers.get(a.version, False)
        if pinger is False:
            try:
                pinger = Pinger(self._datagrams, a.version, self._echo_reply, self._host_input)
            except OSError as e:
                pinger = None
                log.warning(
                    "exit: no IPv%d ping socket (%s); echo requests will go unanswered. "
                    "Allow our group in net.ipv4.ping_group_range (gid %d) or run as root.",
                    a.version,
                    e,
                    os.getgid(),
                )
            self._pingers[a.version] = pinger
        if pinger is None:
            self.exit.receive_echo_failed(a.version, None, time.monotonic())
            return
        err = pinger.send(a.host, a.seq, a.payload)
        if err is not None:
            self.exit.receive_echo_failed(a.version, err, time.monotonic())

    def _echo_reply(self, version: int, src: bytes, seq: int, payload: bytes, now: float) -> None:
        self.exit.receive_echo_reply(version, src, seq, payload, now)
