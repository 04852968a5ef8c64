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

import errno

from tether.netstack.exit.actions import UdpClose, UdpOpen, UdpSend
from tether.netstack.exit.flows import UdpFlow
from tether.netstack.wire import (
    IcmpError,
    IPPacket,
    build_udp_packet,
    errno_to_icmp,
    parse_ip,
    parse_udp,
)

__all__ = ["DNS_PORT", "UdpTable"]

DNS_PORT = 53
_SEND_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class UdpTable:
    """The exit's UDP flows. The `Exit` feeds it its peers' datagrams and its shell's socket
    events; it writes actions, packets and counts into `output` and calls public `Exit` methods
    (`peer`, `send_error`, `arm`) for what is shared with the other tables."""

    def __init__(self, exit_, output, config) -> None:
        self.exit = exit_
        self.output = output
        self.config = config
        self.flows: dict[tuple, UdpFlow] = {}
        self._act = output.actions.append
        self._stats = output.stats

    # -- from the peer -----------------------------------------------------------------------

    def receive_datagram(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
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
            self._stats["drop_udp_bad_port_or_source"] += 1
            return None
        cfg = self.config
        ps = ex.peer(peer_key)
        if not ex.limits.admit(ps, now):
            self._stats["refused_flow_limit"] += 1
            ex.send_error(peer_key, ip, IcmpError.ADMIN_PROHIBITED, now)
            return None
        idle = cfg.udp_idle_dns if dport == DNS_PORT else cfg.udp_idle_unreplied
        flow = UdpFlow(key, ps, self, ip.src, sport, ip.dst, dport, now, idle)
        self.flows[key] = flow
        ps.udp_flows[key] = flow
        ex.limits.added(ps, flow)
        self._act(UdpOpen(flow))
        ex.arm(now + idle, flow)
        self._stats["udp_flows_opened"] += 1
        return flow

    # -- from the host -----------------------------------------------------------------------

    def receive_host_datagram(self, flow: UdpFlow, payload, now: float) -> None:
        if flow.closed:
            return
        flow.last = now
        if not flow.replied:
            flow.replied = True
            if flow.dport != DNS_PORT:
                flow.idle = self.config.udp_idle
        out = self.output
        n = len(payload)
        if n > 65507:  # cannot be a UDP payload in IPv4; in IPv6 it could not be sent either
            self._stats["drop_udp_oversize"] += 1
            return
        v4 = flow.version == 4
        overhead = 28 if v4 else 48
        ident = out.next_ident4() if v4 and n + overhead > out.mtu else 0
        pkt = build_udp_packet(flow.dst, flow.src, flow.dport, flow.sport, payload, ident=ident)
        out.send(pkt)

    def receive_error(self, flow: UdpFlow, err: int, now: float, mtu: int = 0) -> None:
        if err in _SEND_FULL:
            # The host socket's send buffer was full: the datagram is dropped, as a NIC would.
            self._stats["drop_udp_host_buffer_full"] += 1
            return
        if flow.closed:
            return
        kind = errno_to_icmp(err)
        if kind is None or (kind is IcmpError.TOO_BIG and mtu <= 0):
            self._stats["udp_host_error_unmapped"] += 1
            return
        self.exit.send_error(flow.peer.key, self._quote(flow), kind, now, mtu=mtu)

    def receive_open_failed(self, flow: UdpFlow, err: int, now: float) -> None:
        """No socket: tell the peer why, and forget the flow so its next datagram tries again."""
        if flow.closed:
            return
        self.receive_error(flow, err, now)
        self._close(flow)

    def receive_closed(self, flow: UdpFlow, now: float) -> None:
        """The host side ended (see `Exit.receive_udp_closed`): like an expired mapping."""
        if flow.closed:
            return
        self._stats["udp_flows_ended_by_host"] += 1
        self._close(flow)

    @staticmethod
    def _quote(flow: UdpFlow) -> IPPacket:
        """The packet an ICMP error about this flow quotes. The peer's datagram itself is long
        gone (keeping a copy would cost per packet), so its IP and UDP headers are rebuilt: the
        peer's stack matches an ICMP error to its socket by addresses and ports (RFC 1122
        §3.2.2 / RFC 4443 §2.4(b)), which this quote carries exactly."""
        return parse_ip(build_udp_packet(flow.src, flow.dst, flow.sport, flow.dport, b""))

    # -- timers and teardown -----------------------------------------------------------------

    def handle_timer(self, flow: UdpFlow, now: float) -> None:
        """The flow's timer (armed with `Exit.arm`) is due: expire it if it idled long enough."""
        if flow.closed:
            return
        expiry = flow.last + flow.idle
        if expiry > now:
            self.exit.arm(expiry, flow)
        else:
            self._stats["udp_flows_expired"] += 1
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

    def evict(self, flow: UdpFlow, now: float) -> None:
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
