"""The device's own tunnel addresses, as seen from inside the tunnel.

Before (and besides) the exit, a device must answer for itself: `ping <device address>` through
the tunnel is the first thing a WireGuard user tries. The responder answers ICMP and ICMPv6 echo
requests addressed to any of the device's own addresses and ignores everything else (the exit,
when present, takes the rest).
"""

from __future__ import annotations

from tether.config.model import own_addresses
from tether.netstack.icmp import (
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    build_echo,
    parse_icmp,
)
from tether.netstack.ip import PROTO_ICMP, PROTO_ICMPV6, PacketError, parse_ip


class LocalResponder:
    def __init__(self, interface_addresses) -> None:
        self._outbound: list[bytes] = []
        self.answered = 0
        self.set_addresses(interface_addresses)

    @classmethod
    def for_device(cls, device) -> LocalResponder:
        return cls(device.addresses)

    def set_addresses(self, interface_addresses) -> None:
        """Takes the device's Address entries (with prefixes); answers for its own addresses."""
        self.addresses = {a.packed for a in own_addresses(interface_addresses)}

    def deliver(self, peer_key: bytes, packet: bytes, now: float) -> None:
        self.answer(packet)

    def answer(self, packet: bytes) -> bool:
        """Queue an echo reply if `packet` is an echo request to one of our addresses."""
        try:
            ip = parse_ip(packet)
        except PacketError:
            return False
        if ip.dst not in self.addresses or ip.is_fragment:
            return False
        if ip.protocol not in (PROTO_ICMP, PROTO_ICMPV6):
            return False
        try:
            msg = parse_icmp(ip)
        except PacketError:
            return False
        if msg.type not in (ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REQUEST):
            return False
        self._outbound.append(build_echo(ip.dst, ip.src, msg.ident, msg.seq, msg.body))
        self.answered += 1
        return True

    def take_outbound(self) -> list[bytes]:
        out, self._outbound = self._outbound, []
        return out

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def close(self) -> None:
        self._outbound.clear()
