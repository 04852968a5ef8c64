"""The exit: a sans-IO dispatcher that turns peers' IP packets into host-socket actions and the
host's answers back into IP packets for the peers.

    exit = Exit(addresses=["192.168.90.1/24"], mtu=1420)
    exit.receive_packet(peer_key, packet, now)    # a decrypted packet from a peer
    exit.take_actions()  -> [UdpOpen, UdpSend, TcpConnect, ...]   # for the IO shell
    exit.receive_udp_datagram(flow, payload, now) / exit.receive_tcp_connected(flow, now) / ...
    exit.set_egress(default, {peer_key: egress})   # an upstream proxy for new flows
    exit.take_packets() -> [IP packets toward peers]  # the device routes them by AllowedIPs
    exit.next_timer() / exit.handle_timer(now)

Nothing here reads a clock or touches a socket, so tests (and the fuzzer) drive it with a fake
clock and no network. Inputs are `receive_*` (a packet from a peer, or what a host socket did:
the shell's report of an action) and commands (`forget_peer`, `set_*`, `close`); outputs are
taken (`take_actions`, `take_packets`), never peeked. The TCP table services the connections
that inputs touched once per batch (one host write and one ACK decision for a burst of
segments); that step runs at the start of each `take_*`, so either returns everything the inputs
before it caused. Take the actions first: executing them may report host events (a connect that
succeeded at once), whose packets the following `take_packets` then includes.

The path of a packet:

1. `parse_ip` (WireGuard's AEAD already authenticated the packet, so no transport checksum is
   verified, as kernel WireGuard marks decrypted packets CHECKSUM_UNNECESSARY);
2. `ExitPolicy.classify(dst)`: to another peer (TTL decremented, handed back to the device), to
   the device itself (ping answered, TCP reset, UDP port unreachable), refused (RST or ICMP
   administratively prohibited, counted per peer: `refusals()`), dropped (multicast/broadcast),
   or to the host;
3. for the host: fragments through a per-peer `Reassembler`, then TCP (`tcp_table`), UDP
   (`udp_table`), ICMP echo (`echo_table`), anything else ICMP protocol unreachable.

The flow tables and the limits write into one `ExitOutput` the exit owns and drains, and call
only public methods of the exit (`peer`, `send_error`, `arm`). New flows are admitted, and room
made for them, by `limits.Limits` (fair per-peer and total limits on flows and TCP buffers).
How flows leave is the shell's business, but which way each flow leaves is decided here, from
the peer key, when the flow opens (`set_egress`): the shell's descriptor of an upstream proxy
rides on the flow (`flow.egress`; None is the host's own sockets), after the policy has judged
the destination, so a proxy never sees a destination the exit refuses. A flow keeps the egress
it opened with; a change applies to new flows. ICMP echo cannot cross a proxy and is answered
"administratively prohibited" for peers that have one.

When a peer is removed or loses addresses, the device calls `forget_peer`: its flows end at once
and nothing more goes toward those addresses, which the next owner must not receive.

Replies longer than the MTU are fragmented (`ExitOutput.send`): IPv4 with fresh identifications
(RFC 6864), IPv6 as the source of the packet, which it is (RFC 8200 §4.5). ICMP errors obey
`may_send_error` and a token bucket per peer (RFC 4443 §2.4(f)), so one peer can neither flood
itself with errors nor use up another peer's allowance.

Timers of all flows share one heap of (deadline, tie, flow) entries. Entries are never removed:
a flow remembers the deadline it is armed for (`armed`), an entry that no longer matches is
skipped when popped, and a flow whose deadline moved later is re-armed when its old entry pops.
So per-packet work never touches the heap; only a deadline that moves earlier pushes an entry.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from tether.netstack.exit.config import ExitConfig
from tether.netstack.exit.echo_table import EchoTable
from tether.netstack.exit.limits import Limits, PeerState
from tether.netstack.exit.output import ExitOutput
from tether.netstack.exit.policy import DROP, HOST, OWN, PEER, ExitPolicy, decrement_ttl
from tether.netstack.exit.tcp_table import TcpTable
from tether.netstack.exit.udp_table import UdpTable
from tether.netstack.tcp.window_rtt import WindowedMin
from tether.netstack.wire import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_IPV6_NONXT,
    PROTO_TCP,
    PROTO_UDP,
    IcmpError,
    IPPacket,
    PacketError,
    Reassembler,
    TcpError,
    build_error,
    may_send_error,
    parse_ip,
)

__all__ = ["Exit"]


QUEUE_DELAY_WINDOW = 0.01  # seconds over which the socket queue's delay is judged


class Exit:
    """See the module docstring. `addresses` are the device's `Address` entries; `allow`,
    `deny` and `peer_to_peer` the `[Exit]` section's rules (see `ExitPolicy`).

    `config`, `policy`, `limits` and the tables (`udp`, `tcp`, `echo`) are public for reading
    (tests inspect them); what the exit reports goes through `counters()`, `refusals()` and
    `peer_states()`."""

    def __init__(
        self,
        addresses=(),
        *,
        mtu: int = 1420,
        allow_local: bool = False,
        host_addresses=(),
        public_addresses=(),
        allow=(),
        deny=(),
        peer_to_peer: bool = False,
        config: ExitConfig | None = None,
        isn=None,
    ) -> None:
        self.config = cfg = config or ExitConfig()
        self.policy = ExitPolicy(
            addresses,
            allow_local=allow_local,
            host_addresses=host_addresses,
            public_addresses=public_addresses,
            allow=allow,
            deny=deny,
            peer_to_peer=peer_to_peer,
        )
        self._now = 0.0
        self._queue_delays = WindowedMin(QUEUE_DELAY_WINDOW)
        self._output = out = ExitOutput(mtu)
        self._stats = out.stats
        self._peers: dict[bytes, PeerState] = {}
        self._reassembling: set[PeerState] = set()
        self._egress_default = None
        self._egress_peers: Mapping[bytes, object] = {}
        self._heap: list = []
        self._tie = itertools.count()
        self.limits = Limits(self, out, cfg)
        self.udp = UdpTable(self, out, cfg)
        self.tcp = TcpTable(self, out, cfg, isn=isn)
        self.echo = EchoTable(self, out, cfg)

    # -- configuration ---------------------------------------------------------------------

    def set_addresses(self, addresses) -> None:
        """The device's `Address` entries changed: they decide what is a peer, the device
        itself, or the host's network from the next packet on."""
        self.policy.set_addresses(addresses)

    def set_host_addresses(self, addresses, broadcasts=()) -> None:
        """The host's own addresses (the shell re-reads them), which the policy refuses."""
        self.policy.set_host_addresses(addresses, broadcasts)

    def set_rules(self, allow=(), deny=(), peer_to_peer: bool = False) -> None:
        """New destination rules, for packets from now on. Flows already open to a destination
        that is now refused keep running until they end (a NAT that tightens its filter does
        not cut existing connections either); new ones are refused."""
        self.policy.set_rules(allow, deny, peer_to_peer)

    def set_limits(self, **limits: int) -> None:
        """New flow and buffer limits (`max_flows`, `max_flows_per_peer`, `max_buffer`,
        `max_buffer_per_peer`) from now on; see `Limits.configure` for what happens to holdings
        above a lowered limit. ValueError (nothing changed) for a value below 1."""
        config = replace(self.config, **limits)
        self.config = config
        self.limits.configure(config)

    def set_mtu(self, mtu: int) -> None:
        """Applies to packets built from now on and to TCP connections opened from now on (a
        connection's MSS was fixed by its handshake)."""
        self._output.mtu = mtu

    def set_egress(
        self, default=None, per_peer: Mapping[bytes, object] | None = None, now: float | None = None
    ) -> None:
        """How flows leave: `per_peer[key]` for that peer's, else `default`. The values are the
        shell's own descriptors of an upstream proxy, opaque here; None means the host's own
        sockets (for a peer key in `per_peer` too: an override to go direct).

        A peer whose egress changes loses the flows it has open: its TCP connections are reset
        both ways (the app reconnects, the new way), its UDP flows go as a NAT mapping goes (the
        next datagram opens a flow the new way). Left running, a busy UDP flow or a long TCP
        connection would keep leaving the old way indefinitely: from the host's own address
        after the operator put the peer behind a proxy, which fail-closed egress must not do."""
        if now is not None:
            self._now = now
        self._egress_default = default
        self._egress_peers = dict(per_peer or {})
        ended = 0
        for key, ps in self._peers.items():
            egress = self._egress_peers.get(key, default)
            if egress is not ps.egress:
                ps.egress = egress
                tcp, udp = list(ps.tcp.values()), list(ps.udp_flows.values())
                for flow in tcp:
                    self.tcp.evict(flow, self._now, reset=True)
                for flow in udp:
                    self.udp.evict(flow, self._now)
                ended += len(tcp) + len(udp)
        self._stats["flows_egress_changed"] += ended

    def egress_for(self, peer_key: bytes):
        """The egress a new flow of this peer takes (see `set_egress`)."""
        return self._egress_peers.get(peer_key, self._egress_default)

    @property
    def mtu(self) -> int:
        return self._output.mtu

    # -- read-only views -------------------------------------------------------------------

    def counters(self) -> Counter[str]:
        """A copy of the exit's counters (drops, refusals, flows opened and closed, ...; a name
        never counted reads 0), with the gauges `udp_flows` and `tcp_flows` (flows open now)
        and `timer_entries` (the timer heap, stale entries included: it must stay bounded)."""
        c = Counter(self._stats)
        c["udp_flows"] = len(self.udp.flows)
        c["tcp_flows"] = len(self.tcp.flows)
        c["timer_entries"] = len(self._heap)
        return c

    def awaits_datagrams(self) -> bool:
        """Whether an answer may come from the host's datagram side: a UDP flow is open or an
        echo request is outstanding (the shell then reads its datagram sockets between the TCP
        segments of a batch, so that the answer does not wait for the batch)."""
        return bool(self.udp.flows or self.echo.pending)

    def refusals(self) -> dict[bytes, int]:
        """Packets refused by the policy, per peer key (peers with none are left out). One
        entry per peer the exit tracks, gone with the peer's state."""
        return {key: ps.refused for key, ps in self._peers.items() if ps.refused}

    def peer_states(self) -> Mapping[bytes, PeerState]:
        """The per-peer state the exit tracks, by peer key (a read-only live view)."""
        return MappingProxyType(self._peers)

    @property
    def flow_count(self) -> int:
        """UDP and TCP flows open now: each holds a host socket."""
        return len(self.udp.flows) + len(self.tcp.flows)

    def audit(self) -> None:
        """Recount flows and buffer grants and check them against the limits' bookkeeping
        (`Limits.audit`); AssertionError on a difference. O(flows): for tests and the fuzzer."""
        self.limits.audit(self._peers.values(), len(self.tcp.flows), len(self.udp.flows))

    # -- the peer side ---------------------------------------------------------------------

    def receive_packet(
        self, peer_key: bytes, packet: bytes | bytearray | memoryview, now: float
    ) -> None:
        """One decrypted packet from a peer. Never raises for any content of `packet`."""
        self._now = now
        try:
            ip = parse_ip(packet)
            verdict = self.policy.classify(ip.dst)
            if verdict == HOST:
                if ip.is_fragment:
                    ip = self._reassemble(peer_key, ip, now)
                    if ip is None:
                        return
                proto = ip.protocol
                if proto == PROTO_TCP:
                    self.tcp.receive_segment(peer_key, ip, now)
                elif proto == PROTO_UDP:
                    self.udp.receive_datagram(peer_key, ip, now)
                elif proto == (PROTO_ICMP if ip.version == 4 else PROTO_ICMPV6):
                    self.echo.receive_request(peer_key, ip, now)
                else:
                    self._unsupported(peer_key, ip, now)
            elif verdict == PEER:
                self._forward(peer_key, ip, now)
            elif verdict == OWN:
                self._own(peer_key, ip, now)
            elif verdict == DROP:
                self._stats["drop_not_unicast"] += 1
            else:
                self._refuse(peer_key, ip, now)
        except (PacketError, TcpError):
            self._stats["drop_malformed"] += 1

    def _reassemble(self, peer_key: bytes, ip: IPPacket, now: float) -> IPPacket | None:
        ps = self.peer(peer_key)
        r = ps.reassembler
        if r is None:
            cfg = self.config
            r = ps.reassembler = Reassembler(
                max_bytes=cfg.reassembly_bytes_per_peer,
                max_datagrams=cfg.reassembly_datagrams_per_peer,
            )
        whole = r.push(ip, now)
        if len(r):
            self._reassembling.add(ps)
        else:
            self._reassembling.discard(ps)
        return whole

    def _forward(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        """Peer to peer: a router's job, TTL included (see `decrement_ttl`)."""
        mtu = self._output.mtu
        if ip.ttl <= 1:
            src = self.policy.own_source(ip.version)
            if src is not None:
                self.send_error(peer_key, ip, IcmpError.TTL_EXCEEDED, now, src=src)
            return
        if len(ip.raw) > mtu and (ip.dont_fragment or ip.version == 6):
            # Routers never fragment IPv6 nor IPv4 with DF: path MTU discovery (RFC 1191/8201).
            src = self.policy.own_source(ip.version)
            if src is not None:
                self.send_error(peer_key, ip, IcmpError.TOO_BIG, now, src=src, mtu=mtu)
            return
        self._output.send(decrement_ttl(ip.raw))
        self._stats["forwarded"] += 1

    def _own(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        """The device's own address: ping is answered; other protocols get what a host with no
        services answers (RST, port unreachable, protocol unreachable)."""
        if ip.is_fragment:
            ip = self._reassemble(peer_key, ip, now)
            if ip is None:
                return
        proto = ip.protocol
        if proto == (PROTO_ICMP if ip.version == 4 else PROTO_ICMPV6):
            self.echo.answer_own(ip)
        elif proto == PROTO_TCP:
            self.tcp.send_reset(ip)
        elif proto == PROTO_UDP:
            self.send_error(peer_key, ip, IcmpError.PORT_UNREACHABLE, now)
        else:
            self._unsupported(peer_key, ip, now)

    def _refuse(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        self._stats["refused"] += 1
        self.peer(peer_key).refused += 1
        if ip.protocol == PROTO_TCP and not ip.is_fragment:
            self.tcp.send_reset(ip)
        else:
            self.send_error(peer_key, ip, IcmpError.ADMIN_PROHIBITED, now)

    def _unsupported(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        self._stats["drop_protocol"] += 1
        if ip.version == 6 and ip.protocol == PROTO_IPV6_NONXT:
            return  # "no next header": nothing follows, nothing to complain about
        self.send_error(peer_key, ip, IcmpError.PROTOCOL_UNREACHABLE, now)

    def forget_peer(self, peer_key: bytes, now: float, keep=None) -> int:
        """End what the exit holds for a peer that was removed or lost addresses: its flows
        (host sockets closed, TCP aborted with RST toward the server), echo requests, fragments,
        and packets already queued toward its addresses, at once. Nothing more is sent toward
        the tunnel for them: the address may belong to another peer now, and replies are
        routed by destination address. With `keep(src)`, flows whose source address it
        accepts (still routed to this peer) stay. Returns the number of flows ended."""
        self._now = now
        ps = self._peers.get(peer_key)
        if ps is None:
            return 0
        gone: set[bytes] = set()
        ended = self.tcp.forget(ps, keep, gone) + self.udp.forget(ps, keep, gone)
        self.echo.forget(ps, keep, gone)
        if ps.reassembler is not None:
            ps.reassembler = None
            self._reassembling.discard(ps)
        if gone:
            self._output.drop_toward(gone)
        if keep is None:
            del self._peers[peer_key]
        self._stats["flows_forgotten"] += ended
        return ended

    # -- for the flow tables ---------------------------------------------------------------

    def peer(self, peer_key: bytes) -> PeerState:
        """The peer's state, made on first use (bounded: idle peers' go at 4096 peers)."""
        ps = self._peers.get(peer_key)
        if ps is None:
            if len(self._peers) >= 4096:
                self._forget_idle_peers()
            ps = self._peers[peer_key] = PeerState(peer_key, self.config, self.egress_for(peer_key))
        return ps

    def _forget_idle_peers(self) -> None:
        for key, ps in list(self._peers.items()):
            if not ps.udp_flows and not ps.tcp and not ps.echo and ps not in self._reassembling:
                del self._peers[key]

    def send_error(
        self,
        peer_key: bytes,
        offending: IPPacket,
        kind: IcmpError,
        now: float,
        *,
        src: bytes | None = None,
        mtu: int = 0,
    ) -> None:
        """Send an ICMP error about `offending` back to its source, if the rules and the peer's
        token bucket allow. From `src`, by default the offending packet's destination (the exit
        speaks for the destinations it proxies)."""
        if not may_send_error(offending, kind):
            return
        if not self.peer(peer_key).limiter.allow(now):
            self._stats["icmp_rate_limited"] += 1
            return
        out = self._output
        pkt = build_error(offending, src or offending.dst, kind, mtu=mtu, ident=out.next_ident4())
        self._stats["icmp_errors"] += 1
        out.send(pkt)

    def arm(self, deadline: float, flow) -> None:
        """Put `flow` on the timer heap for `deadline` unless it is armed for earlier already;
        `flow.owner.handle_timer(flow, now)` runs once it is due."""
        armed = flow.armed
        if armed is None or deadline < armed:
            flow.armed = deadline
            heapq.heappush(self._heap, (deadline, next(self._tie), flow))

    # -- timers ----------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When `handle_timer` must next run (None: no timer is running)."""
        heap = self._heap
        while heap and heap[0][2].armed != heap[0][0]:
            heapq.heappop(heap)  # superseded: do not wake up for it
        best = heap[0][0] if heap else None
        d = self.echo.next_timer()
        if d is not None and (best is None or d < best):
            best = d
        for ps in self._reassembling:
            d = ps.reassembler.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> None:
        """Run every timer due at `now`: flows', echo requests' and reassemblies'."""
        self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, flow = heapq.heappop(heap)
            if flow.armed != deadline:
                continue  # superseded by an earlier entry, or the flow is gone
            flow.armed = None
            flow.owner.handle_timer(flow, now)
        if len(heap) > 4 * self.flow_count + 1024:
            self._compact_heap()
        self.echo.handle_timer(now)
        for ps in list(self._reassembling):
            r = ps.reassembler
            for first in r.expire(now):
                self.send_error(ps.key, first, IcmpError.REASSEMBLY_TIMEOUT, now)
            if not len(r):
                self._reassembling.discard(ps)

    def _compact_heap(self) -> None:
        """Drop superseded entries (deadlines that moved earlier leave their old entries)."""
        self._heap = [e for e in self._heap if e[2].armed == e[0]]
        heapq.heapify(self._heap)

    # -- host events: what the shell did with an action (see `actions`) --------------------

    def receive_udp_datagram(self, flow, payload, now: float) -> None:
        """A datagram arrived on a flow's socket. `payload` is copied before this returns."""
        self._now = now
        self.udp.receive_host_datagram(flow, payload, now)

    def receive_udp_error(self, flow, err: int, now: float, mtu: int = 0) -> None:
        """The flow's socket reported `err` (ECONNREFUSED: an ICMP port unreachable came back;
        EAGAIN: a send found its buffer full and the datagram was dropped)."""
        self._now = now
        self.udp.receive_error(flow, err, now, mtu)

    def receive_udp_closed(self, flow, now: float) -> None:
        """The flow's host side ended by itself (the upstream proxy closed its association):
        the flow is forgotten at once, so the peer's next datagram opens a new one."""
        self._now = now
        self.udp.receive_closed(flow, now)

    def receive_udp_open_failed(self, flow, err: int, now: float) -> None:
        """The shell could not create or connect the flow's socket."""
        self._now = now
        self.udp.receive_open_failed(flow, err, now)

    def receive_tcp_connected(self, flow, now: float) -> None:
        """The flow's host socket connected: the peer's SYN is answered."""
        self._now = now
        self.tcp.receive_connected(flow, now)

    def receive_tcp_connect_failed(self, flow, err: int, now: float) -> None:
        """ECONNREFUSED → RST to the peer; anything else → ICMP unreachable quoting its SYN."""
        self._now = now
        self.tcp.receive_connect_failed(flow, err, now)

    def tcp_read_budget(self, flow) -> int:
        """How many bytes the shell may read from the host socket now (0: it is paused)."""
        return self.tcp.read_budget(flow)

    def receive_tcp_data(self, flow, data, now: float) -> None:
        """Bytes read from the flow's host socket (at most `tcp_read_budget`), for the peer."""
        self._now = now
        self.tcp.receive_data(flow, data, now)

    def receive_tcp_eof(self, flow, now: float) -> None:
        """The host closed its sending side: the peer gets FIN after the data before it."""
        self._now = now
        self.tcp.receive_eof(flow, now)

    def receive_tcp_reset(self, flow, now: float) -> None:
        """The host connection broke (reset, or a send failed): the peer gets RST."""
        self._now = now
        self.tcp.receive_reset(flow, now)

    def receive_tcp_write_blocked(self, flow, now: float) -> None:
        """The shell holds unwritten bytes of a `TcpWrite`: nothing more is written to the flow
        until `receive_tcp_writable`, so the peer's window closes (backpressure)."""
        self._now = now
        self.tcp.receive_write_blocked(flow, now)

    def receive_tcp_writable(self, flow, now: float) -> None:
        """The shell wrote everything it held for the flow."""
        self._now = now
        self.tcp.receive_writable(flow, now)

    def receive_echo_reply(self, version: int, src: bytes, seq: int, payload, now: float) -> None:
        """An echo reply from `src` (packed address) with the exit's sequence number `seq`."""
        self._now = now
        self.echo.receive_reply(version, src, seq, payload, now)

    def receive_echo_failed(self, version: int, err: int | None, now: float) -> None:
        """An `EchoSend` could not be sent: `err` is its errno, None when the shell has no ping
        socket for the IP version (counted; the request times out as a lost ping would)."""
        self._now = now
        self.echo.receive_send_failed(version, err, now)

    # -- output ----------------------------------------------------------------------------

    def receive_queue_delay(self, delay: float, now: float) -> None:
        """The packets about to be received waited `delay` seconds in the device's socket queue
        (the shell measures it): TCP windows of peers whose data arrives in this batch follow
        it (`TcpConnection.receive_queue_delay`).

        What they follow is the least delay of the last `QUEUE_DELAY_WINDOW` seconds, as CoDel
        judges a queue by its minimum sojourn over an interval: a queue the windows built
        stays, while a wait because the process was not scheduled (a busy machine) passes, and
        shrinking windows for that would cost throughput and cure nothing."""
        self._now = now
        self._queue_delays.add(delay, now)
        self.tcp.receive_queue_delay(self._queue_delays.least(now), delay)

    def take_actions(self) -> list:
        """Host-socket actions, in the order they must be executed (after the TCP batch step:
        see the module docstring)."""
        self.tcp.flush(self._now)
        actions = self._output.actions
        if not actions:
            return []
        out = actions[:]
        actions.clear()  # the same list: the tables hold its bound `append`
        return out

    def take_first(self) -> list[bytes]:
        """The packets toward peers that leave ahead of the TCP segments (echo and UDP replies,
        ICMP errors, forwards: `ExitOutput`), without the TCP batch step, so that a shell can
        send an answer while a batch is still being worked on."""
        return self._output.take_first()

    def take_packets(self) -> list[bytes]:
        """IP packets toward peers, each at most `mtu` bytes (after the TCP batch step), those
        the exit built one at a time first."""
        self.tcp.flush(self._now)
        return self._output.take_packets()

    def close(self) -> None:
        """Forget every flow. The actions that release their host sockets are left for
        `take_actions`; packets toward peers are dropped."""
        self.tcp.close_all()
        self.udp.close_all()
        self.echo.close_all()
        self._heap.clear()
        self._reassembling.clear()
        self._output.clear()
