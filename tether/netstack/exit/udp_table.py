"""UDP through the exit: one connected host socket per flow.

A flow is (peer, source address and port, destination address and port). Using a connected
socket per flow, rather than one shared socket, is what makes the exit behave like an
endpoint-dependent NAT the peer can reason about: the host kernel filters replies to exactly the
destination the peer talked to (RFC 4787's "address and port-dependent filtering"), and an ICMP
port unreachable from the destination surfaces on that socket as ECONNREFUSED, which we turn
back into ICMP port unreachable for the peer. The cost is a file descriptor per flow, which is
why flows are bounded per peer and overall (`limits`), and expire when idle (see
`ExitConfig`).

The per-datagram work is one dict lookup, one timestamp store and one action toward the host;
replies cost one packet build (the UDP checksum over the payload is the only per-byte work).
"""

from __future__ import annotations

import ipaddress

from tether.netstack.exit.actions import UdpClose, UdpOpen, UdpSend
from tether.netstack.wire import (
    IcmpError,
    IPPacket,
    build_udp_packet,
    errno_to_icmp,
    parse_ip,
    parse_udp,
)

__all__ = ["UdpFlow", "UdpTable"]

DNS_PORT = 53


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
        self.last = now
        self.idle = idle
        self.replied = False
        self.armed: float | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<UdpFlow {self.sport}->{self.host}:{self.port}{' closed' if self.closed else ''}>"


class UdpTable:
    def __init__(self, exit_, config) -> None:
        self.exit = exit_
        self.config = config
        self.flows: dict[tuple, UdpFlow] = {}
        self._act = exit_._actions.append

    # -- from the peer -----------------------------------------------------------------------

    def datagram(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        d = parse_udp(ip, verify=False)
        key = (peer_key, ip.src, d.src_port, ip.dst, d.dst_port)
        flow = self.flows.get(key)
        if flow is None:
            flow = self._open(peer_key, key, ip, d.src_port, d.dst_port, now)
            if flow is None:
                return
        flow.last = now
        self._act(UdpSend(flow, d.payload))

    def _open(self, peer_key, key, ip: IPPacket, sport: int, dport: int, now: float):
        ex = self.exit
        if sport == 0 or dport == 0 or not ex.policy.valid_source(ip.src):
            ex.stats["drop_udp_bad_port_or_source"] += 1
            return None
        cfg = self.config
        ps = ex.peer(peer_key)
        if not ex.limits.admit(ps):
            ex.stats["refused_flow_limit"] += 1
            ex.error(peer_key, ip, IcmpError.ADMIN_PROHIBITED, now)
            return None
        idle = cfg.udp_idle_dns if dport == DNS_PORT else cfg.udp_idle_unreplied
        flow = UdpFlow(key, ps, self, ip.src, sport, ip.dst, dport, now, idle)
        self.flows[key] = flow
        ps.udp_flows[key] = flow
        ex.limits.added(ps, flow)
        self._act(UdpOpen(flow))
        ex.arm(now + idle, flow)
        ex.stats["udp_flows_opened"] += 1
        return flow

    # -- from the host -----------------------------------------------------------------------

    def received(self, flow: UdpFlow, payload, now: float) -> None:
        if flow.closed:
            return
        flow.last = now
        if not flow.replied:
            flow.replied = True
            if flow.dport != DNS_PORT:
                flow.idle = self.config.udp_idle
        ex = self.exit
        n = len(payload)
        if n > 65507:  # cannot be a UDP payload in IPv4; in IPv6 it could not be sent either
            ex.stats["drop_udp_oversize"] += 1
            return
        v4 = flow.version == 4
        overhead = 28 if v4 else 48
        ident = ex.next_ident4() if v4 and n + overhead > ex.mtu else 0
        pkt = build_udp_packet(flow.dst, flow.src, flow.dport, flow.sport, payload, ident=ident)
        ex.send(pkt)

    def error(self, flow: UdpFlow, err: int, now: float, mtu: int = 0) -> None:
        if flow.closed:
            return
        kind = errno_to_icmp(err)
        if kind is None or (kind is IcmpError.TOO_BIG and mtu <= 0):
            self.exit.stats["udp_host_error_unmapped"] += 1
            return
        self.exit.error(flow.peer.key, self._quote(flow), kind, now, mtu=mtu)

    def open_failed(self, flow: UdpFlow, err: int, now: float) -> None:
        """No socket: tell the peer why, and forget the flow so its next datagram tries again."""
        if flow.closed:
            return
        self.error(flow, err, now)
        self._close(flow)

    @staticmethod
    def _quote(flow: UdpFlow) -> IPPacket:
        """The packet an ICMP error about this flow quotes. The peer's datagram itself is long
        gone (keeping a copy would cost per packet), so its IP and UDP headers are rebuilt: the
        peer's stack matches an ICMP error to its socket by addresses and ports (RFC 1122
        §3.2.2 / RFC 4443 §2.4(b)), which this quote carries exactly."""
        return parse_ip(build_udp_packet(flow.src, flow.dst, flow.sport, flow.dport, b""))

    # -- timers and teardown -----------------------------------------------------------------

    def on_deadline(self, flow: UdpFlow, now: float) -> None:
        if flow.closed:
            return
        expiry = flow.last + flow.idle
        if expiry > now:
            self.exit.arm(expiry, flow)
        else:
            self.exit.stats["udp_flows_expired"] += 1
            self._close(flow)

    def _close(self, flow: UdpFlow) -> None:
        if flow.closed:
            return
        flow.closed = True
        flow.armed = None
        self.flows.pop(flow.key, None)
        ps = flow.peer
        if ps.udp_flows.pop(flow.key, None) is not None:
            self.exit.limits.removed(ps, flow)
        self._act(UdpClose(flow))

    def evict(self, flow: UdpFlow) -> None:
        """Make room (`limits`): like a NAT whose table is full, the mapping just goes."""
        self._close(flow)

    def forget(self, ps, keep, gone: set) -> int:
        """Close the peer's flows whose source `keep` rejects (all without `keep`); their
        source addresses go into `gone`. See `Exit.forget_peer`."""
        n = 0
        for flow in list(ps.udp_flows.values()):
            if keep is None or not keep(flow.src):
                gone.add(flow.src)
                self._close(flow)
                n += 1
        return n

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self._close(flow)
