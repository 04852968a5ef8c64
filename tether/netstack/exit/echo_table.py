"""ICMP echo through the exit: the device's own addresses answer; other destinations are pinged
for real through the host's ping socket, and only real replies come back.

The host's ping socket (SOCK_DGRAM/IPPROTO_ICMP) imposes its own echo identifier, and all peers
share it, so the exit renumbers: each request gets a sequence number of the exit's, unique among
its outstanding requests to that destination, and the reply is matched by (destination,
sequence) and rewritten to the peer's own identifier and sequence number. Requests that get no
reply are forgotten after `echo_timeout`; since every request waits the same time, insertion
order is deadline order and expiry only looks at the front of a dict.

A peer whose flows leave through an upstream proxy (`Exit.set_egress`) cannot ping through it:
SOCKS carries TCP and UDP only. Its echo requests are answered with ICMP "administratively
prohibited" at once, rather than sent from the host's own address (which would leak around
the proxy) or left to time out.
"""

from __future__ import annotations

import ipaddress

from tether.netstack.exit.actions import EchoSend
from tether.netstack.wire import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IcmpError,
    IPPacket,
    build_icmp_packet,
    parse_icmp,
)

__all__ = ["EchoTable"]

_MAX_OUTSTANDING = 16384  # all peers together; well inside the 16-bit sequence space


class _Pending:
    __slots__ = ("peer", "src", "ident", "seq", "deadline")

    def __init__(self, peer, src: bytes, ident: int, seq: int, deadline: float) -> None:
        self.peer = peer
        self.src = src
        self.ident = ident
        self.seq = seq
        self.deadline = deadline


class EchoTable:
    """The exit's outstanding echo requests. The `Exit` feeds it pings from peers and replies
    from the shell's ping sockets; it writes actions, packets and counts into `output`."""

    def __init__(self, exit_, output, config) -> None:
        self.exit = exit_
        self.output = output
        self.config = config
        self.pending: dict[tuple[int, bytes, int], _Pending] = {}
        self._seq = 0
        self._act = output.actions.append
        self._stats = output.stats

    def answer_own(self, ip: IPPacket) -> None:
        """An echo request to one of the device's own addresses gets a reply, so `ping <device
        address>` works through the tunnel. Other ICMP to the device is dropped."""
        msg = parse_icmp(ip, verify=False)
        if msg.type != (ICMPV4_ECHO_REQUEST if ip.version == 4 else ICMPV6_ECHO_REQUEST):
            return
        self._send_reply(ip.version, ip.dst, ip.src, msg.rest, msg.body)
        self._stats["echo_own"] += 1

    def receive_request(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        """ICMP toward the host's network: echo requests are proxied; everything else (errors,
        neighbour discovery, replies) concerns no flow of ours and is dropped."""
        ex = self.exit
        msg = parse_icmp(ip, verify=False)
        v = ip.version
        if msg.type != (ICMPV4_ECHO_REQUEST if v == 4 else ICMPV6_ECHO_REQUEST):
            self._stats["drop_icmp_type"] += 1
            return
        if not ex.policy.valid_source(ip.src):
            return
        ps = ex.peer(peer_key)
        if ps.egress is not None:
            # an upstream proxy carries TCP and UDP only: say at once that ping cannot pass
            self._stats["refused_echo_egress"] += 1
            ex.send_error(peer_key, ip, IcmpError.ADMIN_PROHIBITED, now)
            return
        if ps.echo >= self.config.max_echo_per_peer or len(self.pending) >= _MAX_OUTSTANDING:
            self._stats["drop_echo_limit"] += 1
            return
        dst = ip.dst
        pending = self.pending
        seq = self._seq
        while True:
            seq = (seq + 1) & 0xFFFF
            if (v, dst, seq) not in pending:
                break
        self._seq = seq
        pending[(v, dst, seq)] = _Pending(
            ps, ip.src, msg.ident, msg.seq, now + self.config.echo_timeout
        )
        ps.echo += 1
        self._act(EchoSend(v, ipaddress.ip_address(dst).compressed, seq, msg.body))
        self._stats["echo_sent"] += 1

    def receive_reply(self, version: int, src: bytes, seq: int, payload, now: float) -> None:
        p = self.pending.pop((version, bytes(src), seq), None)
        if p is None:
            self._stats["drop_echo_unmatched"] += 1
            return
        p.peer.echo -= 1
        self._send_reply(version, bytes(src), p.src, (p.ident << 16) | p.seq, payload)
        self._stats["echo_replied"] += 1

    def receive_send_failed(self, version: int, err: int | None, now: float) -> None:
        """An `EchoSend` could not be sent: `err` is the send's errno, None when the shell has
        no ping socket for the IP version. Counted only: the request times out as unanswered
        requests do, which is what the peer would see from a lost ping."""
        self._stats["echo_unavailable" if err is None else "echo_send_failed"] += 1

    def _send_reply(self, version: int, src: bytes, dst: bytes, rest: int, body) -> None:
        out = self.output
        t = ICMPV4_ECHO_REPLY if version == 4 else ICMPV6_ECHO_REPLY
        # A fresh IPv4 identification: a large reply is fragmented toward the peer.
        ident = out.next_ident4() if version == 4 else 0
        out.send(build_icmp_packet(src, dst, t, 0, rest, body, ident=ident))

    def next_timer(self) -> float | None:
        """When the oldest outstanding request times out."""
        if not self.pending:
            return None
        return self.pending[next(iter(self.pending))].deadline

    def handle_timer(self, now: float) -> None:
        """Forget the requests that timed out by `now`."""
        pending = self.pending
        while pending:
            key = next(iter(pending))
            p = pending[key]
            if p.deadline > now:
                break
            del pending[key]
            p.peer.echo -= 1
            self._stats["echo_timed_out"] += 1

    def forget(self, ps, keep, gone: set) -> None:
        """Forget the peer's outstanding requests whose source `keep` rejects (all without it):
        a late reply must not reach the next owner of the address. See `Exit.forget_peer`."""
        if not ps.echo:
            return
        pending = self.pending
        for key in [k for k, p in pending.items() if p.peer is ps]:
            p = pending[key]
            if keep is None or not keep(p.src):
                gone.add(p.src)
                del pending[key]
                ps.echo -= 1

    def close_all(self) -> None:
        for p in self.pending.values():
            p.peer.echo -= 1
        self.pending.clear()
