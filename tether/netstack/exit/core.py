"""The exit: a sans-IO dispatcher that turns peers' IP packets into host-socket actions and the
host's answers back into IP packets for the peers.

    exit = Exit(addresses=["192.168.90.1/24"], mtu=1420)
    exit.deliver(peer_key, packet, now)           # a decrypted packet from a peer
    exit.take_actions()  -> [UdpOpen, UdpSend, TcpConnect, ...]   # for the IO shell
    exit.udp_received(flow, payload, now) / exit.tcp_connected(flow, now) / ...   # host events
    exit.take_outbound() -> [IP packets toward peers]  # the device routes them by AllowedIPs
    exit.next_deadline() / exit.on_timer(now)

Nothing here reads a clock or touches a socket, so tests (and the fuzzer) drive it with a fake
clock and no network. The path of a packet:

1. `parse_ip` (WireGuard's AEAD already authenticated the packet, so no transport checksum is
   verified, as kernel WireGuard marks decrypted packets CHECKSUM_UNNECESSARY);
2. `ExitPolicy.classify(dst)`: to another peer (TTL decremented, handed back to the device), to
   the device itself (ping answered, TCP reset, UDP port unreachable), refused (RST or ICMP
   administratively prohibited, counted per peer: `refusals()`), dropped (multicast/broadcast),
   or to the host;
3. for the host: fragments through a per-peer `Reassembler`, then TCP (`tcp_table`), UDP
   (`udp_table`), ICMP echo (`echo_table`), anything else ICMP protocol unreachable.

New flows are admitted, and room made for them, by `limits.Limits` (fair per-peer and
total limits on flows and TCP buffers). When a peer is removed or loses addresses, the device
calls `forget_peer`: its flows end at once and nothing more goes toward those addresses, which
the next owner must not receive.

Replies longer than the MTU are fragmented here: IPv4 with fresh identifications (RFC 6864),
IPv6 as the source of the packet, which it is (RFC 8200 §4.5). ICMP errors obey `may_send_error`
and a token bucket per peer (RFC 4443 §2.4(f)), so one peer can neither flood itself with errors
nor use up another peer's allowance.

Timers of all flows share one heap of (deadline, tie, flow) entries. Entries are never removed:
a flow remembers the deadline it is armed for (`armed`), an entry that no longer matches is
skipped when popped, and a flow whose deadline moved later is re-armed when its old entry pops.
So per-packet work never touches the heap; only a deadline that moves earlier pushes an entry.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace

from tether.netstack.exit.echo_table import EchoTable
from tether.netstack.exit.limits import Limits, PeerState
from tether.netstack.exit.policy import DROP, HOST, OWN, PEER, ExitPolicy, decrement_ttl
from tether.netstack.exit.tcp_table import TcpTable
from tether.netstack.exit.udp_table import UdpTable
from tether.netstack.tcp import TcpConfig
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
    fragment_ipv4,
    fragment_ipv6,
    may_send_error,
    parse_ip,
)

__all__ = ["Exit", "ExitConfig", "PeerState"]


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


class Exit:
    """See the module docstring. `addresses` are the device's `Address` entries; `allow`,
    `deny` and `peer_to_peer` the `[Exit]` section's rules (see `ExitPolicy`)."""

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
        self.mtu = mtu
        self.policy = ExitPolicy(
            addresses,
            allow_local=allow_local,
            host_addresses=host_addresses,
            public_addresses=public_addresses,
            allow=allow,
            deny=deny,
            peer_to_peer=peer_to_peer,
        )
        self.now = 0.0
        self.stats: Counter[str] = Counter()
        self._out: list[bytes] = []
        self._actions: list = []
        self._peers: dict[bytes, PeerState] = {}
        self._reassembling: set[PeerState] = set()
        self._heap: list = []
        self._tie = itertools.count()
        self._ident4 = 0
        self._ident6 = 0
        self.limits = Limits(self, cfg)
        self.udp = UdpTable(self, cfg)
        self.tcp = TcpTable(self, cfg, isn=isn)
        self.echo = EchoTable(self, cfg)

    # -- configuration ---------------------------------------------------------------------

    def set_addresses(self, addresses) -> None:
        self.policy.set_addresses(addresses)

    def set_host_addresses(self, addresses, broadcasts=()) -> None:
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

    def refusals(self) -> dict[bytes, int]:
        """Packets refused by the policy, per peer key (peers with none are left out). One
        entry per peer the exit tracks, gone with the peer's state."""
        return {key: ps.refused for key, ps in self._peers.items() if ps.refused}

    def set_mtu(self, mtu: int) -> None:
        """Applies to packets built from now on and to TCP connections opened from now on (a
        connection's MSS was fixed by its handshake)."""
        self.mtu = mtu

    @property
    def flow_count(self) -> int:
        return len(self.udp.flows) + len(self.tcp.flows)

    # -- the peer side ---------------------------------------------------------------------

    def deliver(self, peer_key: bytes, packet: bytes | bytearray | memoryview, now: float) -> None:
        """One decrypted packet from a peer. Never raises for any content of `packet`."""
        self.now = now
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
                    self.tcp.segment(peer_key, ip, now)
                elif proto == PROTO_UDP:
                    self.udp.datagram(peer_key, ip, now)
                elif proto == (PROTO_ICMP if ip.version == 4 else PROTO_ICMPV6):
                    self.echo.request(peer_key, ip, now)
                else:
                    self._unsupported(peer_key, ip, now)
            elif verdict == PEER:
                self._forward(peer_key, ip, now)
            elif verdict == OWN:
                self._own(peer_key, ip, now)
            elif verdict == DROP:
                self.stats["drop_not_unicast"] += 1
            else:
                self._refuse(peer_key, ip, now)
        except (PacketError, TcpError):
            self.stats["drop_malformed"] += 1

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
        if ip.ttl <= 1:
            src = self.policy.own_source(ip.version)
            if src is not None:
                self.error(peer_key, ip, IcmpError.TTL_EXCEEDED, now, src=src)
            return
        if len(ip.raw) > self.mtu and (ip.dont_fragment or ip.version == 6):
            # Routers never fragment IPv6 nor IPv4 with DF: path MTU discovery (RFC 1191/8201).
            src = self.policy.own_source(ip.version)
            if src is not None:
                self.error(peer_key, ip, IcmpError.TOO_BIG, now, src=src, mtu=self.mtu)
            return
        self.send(decrement_ttl(ip.raw))
        self.stats["forwarded"] += 1

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
            self.tcp.reset_reply(ip)
        elif proto == PROTO_UDP:
            self.error(peer_key, ip, IcmpError.PORT_UNREACHABLE, now)
        else:
            self._unsupported(peer_key, ip, now)

    def _refuse(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        self.stats["refused"] += 1
        self.peer(peer_key).refused += 1
        if ip.protocol == PROTO_TCP and not ip.is_fragment:
            self.tcp.reset_reply(ip)
        else:
            self.error(peer_key, ip, IcmpError.ADMIN_PROHIBITED, now)

    def _unsupported(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        self.stats["drop_protocol"] += 1
        if ip.version == 6 and ip.protocol == PROTO_IPV6_NONXT:
            return  # "no next header": nothing follows, nothing to complain about
        self.error(peer_key, ip, IcmpError.PROTOCOL_UNREACHABLE, now)

    def forget_peer(self, peer_key: bytes, now: float, keep=None) -> int:
        """End what the exit holds for a peer that was removed or lost addresses: its flows
        (host sockets closed, TCP aborted with RST toward the server), echo requests, fragments,
        and packets already queued toward its addresses, at once. Nothing more is sent toward
        the tunnel for them: the address may belong to another peer now, and replies are
        routed by destination address. With `keep(src)`, flows whose source address it
        accepts (still routed to this peer) stay. Returns the number of flows ended."""
        self.now = now
        ps = self._peers.get(peer_key)
        if ps is None:
            return 0
        gone: set[bytes] = set()
        ended = self.tcp.forget(ps, keep, gone) + self.udp.forget(ps, keep, gone)
        self.echo.forget(ps, keep, gone)
        if ps.reassembler is not None:
            ps.reassembler = None
            self._reassembling.discard(ps)
        if gone and self._out:
            self._out[:] = [p for p in self._out if _destination(p) not in gone]
        if keep is None:
            del self._peers[peer_key]
        self.stats["flows_forgotten"] += ended
        return ended

    # -- helpers for the flow tables -------------------------------------------------------

    def peer(self, peer_key: bytes) -> PeerState:
        ps = self._peers.get(peer_key)
        if ps is None:
            if len(self._peers) >= 4096:
                self._forget_idle_peers()
            ps = self._peers[peer_key] = PeerState(peer_key, self.config)
        return ps

    def _forget_idle_peers(self) -> None:
        for key, ps in list(self._peers.items()):
            if not ps.udp_flows and not ps.tcp and not ps.echo and ps not in self._reassembling:
                del self._peers[key]

    def send(self, packet: bytes) -> None:
        """Queue a packet toward a peer, fragmenting it if it exceeds the MTU."""
        if len(packet) <= self.mtu:
            self._out.append(packet)
            return
        try:
            if packet[0] >> 4 == 4:
                frags = fragment_ipv4(packet, self.mtu)
            else:
                frags = fragment_ipv6(packet, self.mtu, self.next_ident6())
        except PacketError:
            self.stats["drop_unfragmentable"] += 1
            return
        self._out.extend(frags)
        self.stats["fragmented"] += 1

    def next_ident4(self) -> int:
        """IPv4 identification for a datagram that may be fragmented (RFC 6864 §4.2)."""
        self._ident4 = (self._ident4 + 1) & 0xFFFF
        return self._ident4

    def next_ident6(self) -> int:
        self._ident6 = (self._ident6 + 1) & 0xFFFFFFFF
        return self._ident6

    def error(
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
            self.stats["icmp_rate_limited"] += 1
            return
        pkt = build_error(offending, src or offending.dst, kind, mtu=mtu, ident=self.next_ident4())
        self.stats["icmp_errors"] += 1
        self.send(pkt)

    def arm(self, deadline: float, flow) -> None:
        """Put `flow` on the timer heap for `deadline` unless it is armed for earlier already;
        `flow.owner.on_deadline(flow, now)` runs once it is due."""
        armed = flow.armed
        if armed is None or deadline < armed:
            flow.armed = deadline
            heapq.heappush(self._heap, (deadline, next(self._tie), flow))

    # -- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].armed != heap[0][0]:
            heapq.heappop(heap)  # superseded: do not wake up for it
        best = heap[0][0] if heap else None
        d = self.echo.next_deadline()
        if d is not None and (best is None or d < best):
            best = d
        for ps in self._reassembling:
            d = ps.reassembler.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def on_timer(self, now: float) -> None:
        self.now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, flow = heapq.heappop(heap)
            if flow.armed != deadline:
                continue  # superseded by an earlier entry, or the flow is gone
            flow.armed = None
            flow.owner.on_deadline(flow, now)
        if len(heap) > 4 * self.flow_count + 1024:
            self._compact_heap()
        self.echo.expire(now)
        for ps in list(self._reassembling):
            r = ps.reassembler
            for first in r.expire(now):
                self.error(ps.key, first, IcmpError.REASSEMBLY_TIMEOUT, now)
            if not len(r):
                self._reassembling.discard(ps)

    def _compact_heap(self) -> None:
        """Drop superseded entries (deadlines that moved earlier leave their old entries)."""
        self._heap = [e for e in self._heap if e[2].armed == e[0]]
        heapq.heapify(self._heap)

    # -- host events (see the action classes in `actions`) ----------------------------

    def udp_received(self, flow, payload, now: float) -> None:
        """A datagram arrived on a flow's socket. `payload` is copied before this returns."""
        self.now = now
        self.udp.received(flow, payload, now)

    def udp_error(self, flow, err: int, now: float, mtu: int = 0) -> None:
        """The flow's socket reported `err` (ECONNREFUSED: an ICMP port unreachable came back)."""
        self.now = now
        self.udp.error(flow, err, now, mtu)

    def udp_open_failed(self, flow, err: int, now: float) -> None:
        """The shell could not create or connect the flow's socket."""
        self.now = now
        self.udp.open_failed(flow, err, now)

    def tcp_connected(self, flow, now: float) -> None:
        self.now = now
        self.tcp.connected(flow, now)

    def tcp_connect_failed(self, flow, err: int, now: float) -> None:
        """ECONNREFUSED → RST to the peer; anything else → ICMP unreachable quoting its SYN."""
        self.now = now
        self.tcp.connect_failed(flow, err, now)

    def tcp_refused(self, flow, now: float) -> None:
        self.tcp_connect_failed(flow, 111, now)  # ECONNREFUSED

    def tcp_timeout(self, flow, now: float) -> None:
        self.tcp_connect_failed(flow, 110, now)  # ETIMEDOUT

    def tcp_read_budget(self, flow) -> int:
        """How many bytes the shell may read from the host socket now (0: it is paused)."""
        return self.tcp.read_budget(flow)

    def tcp_data(self, flow, data, now: float) -> None:
        self.now = now
        self.tcp.data(flow, data, now)

    def tcp_eof(self, flow, now: float) -> None:
        self.now = now
        self.tcp.eof(flow, now)

    def tcp_reset(self, flow, now: float) -> None:
        self.now = now
        self.tcp.reset(flow, now)

    def tcp_write_blocked(self, flow) -> None:
        self.tcp.write_blocked(flow)

    def tcp_writable(self, flow, now: float) -> None:
        self.now = now
        self.tcp.writable(flow, now)

    def echo_reply(self, version: int, src: bytes, seq: int, payload, now: float) -> None:
        """An echo reply from `src` (packed address) with the exit's sequence number `seq`."""
        self.now = now
        self.echo.reply(version, src, seq, payload, now)

    # -- output ----------------------------------------------------------------------------

    def take_actions(self) -> list:
        """Host-socket actions, in the order they must be executed."""
        self.tcp.flush(self.now)
        if not self._actions:
            return []
        out = self._actions[:]
        self._actions.clear()
        return out

    def take_outbound(self) -> list[bytes]:
        """IP packets toward peers, each at most `mtu` bytes."""
        self.tcp.flush(self.now)
        if not self._out:
            return []
        out = self._out[:]
        self._out.clear()
        return out

    def close(self) -> list:
        """Forget every flow; returns the actions that release their host sockets."""
        self.tcp.close_all()
        self.udp.close_all()
        self.echo.close_all()
        self._heap.clear()
        self._reassembling.clear()
        self._out.clear()
        actions = self._actions[:]
        self._actions.clear()
        return actions


def _destination(packet: bytes) -> bytes:
    """The destination address of an IP packet the exit built (IPv4 or IPv6)."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
