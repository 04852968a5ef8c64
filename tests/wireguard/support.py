"""Shared fixtures for the device-core tests: two cores, a fake network and a fake clock.

No tests live here; the other test_core* modules import it. Time is a float the tests advance
by hand; wall-clock time is always `now + WALL_OFFSET`, so TAI64N timestamps increase with it.
"""

from __future__ import annotations

import random
import struct

from tether import keys
from tether.wireguard.constants import MESSAGE_TRANSPORT
from tether.wireguard.core import WireGuardCore

WALL_OFFSET = 1_700_000_000.0
A_ADDR = ("198.51.100.1", 51820)
B_ADDR = ("198.51.100.2", 51821)
A_IP = bytes([10, 0, 0, 1])
B_IP = bytes([10, 0, 0, 2])


def ip4(src: bytes, dst: bytes, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv4 packet; the core reads only version, total length and addresses."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, src, dst)
    return header + payload


def ip6(src: bytes, dst: bytes, payload: bytes = b"") -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, src, dst)
    return header + payload


def is_transport(datagram: bytes) -> bool:
    return struct.unpack_from("<I", datagram)[0] == MESSAGE_TRANSPORT


def mtype(datagram: bytes) -> int:
    return struct.unpack_from("<I", datagram)[0]


class RecordingCore(WireGuardCore):
    """A real core whose outputs a test reads as lists: `outgoing` and `delivered` take what the
    core produced (`take_datagrams`, `take_packets`) and keep everything since the test last
    cleared them. `delivered` holds (peer public key, packet) pairs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sent: list[tuple[bytes, tuple]] = []
        self._received: list[tuple[bytes, bytes]] = []

    @property
    def outgoing(self) -> list[tuple[bytes, tuple]]:
        self._sent += self.take_datagrams()
        return self._sent

    @property
    def delivered(self) -> list[tuple[bytes, bytes]]:
        self._received += self.take_packets()
        return self._received


class Pair:
    """Cores A (10.0.0.1, knows B's endpoint) and B (10.0.0.2, learns A's by roaming).

    `pump` moves datagrams between them with zero latency until both are quiet; `drop_if` lets
    a test lose datagrams; `advance` runs the timers of both up to a time, pumping after each.
    """

    def __init__(self, seed: int = 0, *, b_knows_a: bool = False, **core_kwargs) -> None:
        rng = random.Random(seed)
        self.a_key = keys.generate_private()
        self.b_key = keys.generate_private()
        self.a = RecordingCore(self.a_key, rng=random.Random(rng.random()), **core_kwargs)
        self.b = RecordingCore(self.b_key, rng=random.Random(rng.random()), **core_kwargs)
        self.now = 0.0
        self.ab = self.a.add_or_update_peer(
            self.b.public_key, now=0.0, endpoint=B_ADDR, allowed_ips=["10.0.0.2/32", "fd00::2/128"]
        )
        self.ba = self.b.add_or_update_peer(
            self.a.public_key,
            now=0.0,
            endpoint=A_ADDR if b_knows_a else None,
            allowed_ips=["10.0.0.1/32", "fd00::1/128"],
        )
        self.drop_if = lambda src, datagram: False
        self.log: list[tuple[float, tuple, bytes]] = []  # every datagram put on the wire

    @property
    def wall(self) -> float:
        return self.now + WALL_OFFSET

    def core_at(self, addr: tuple) -> RecordingCore | None:
        return {A_ADDR: self.a, B_ADDR: self.b}.get(addr)

    def take(self) -> list[tuple[tuple, tuple, bytes]]:
        """(src, dst, datagram) for everything both cores want to send; clears their outboxes."""
        out = []
        for core, addr in ((self.a, A_ADDR), (self.b, B_ADDR)):
            for datagram, endpoint in core.outgoing:
                out.append((addr, endpoint, datagram))
                self.log.append((self.now, addr, datagram))
            core.outgoing.clear()
        return out

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moving = self.take()
            if not moving:
                return
            for src, dst, datagram in moving:
                core = self.core_at(dst)
                if core is not None and not self.drop_if(src, datagram):
                    core.receive_datagram(datagram, src, self.now, self.wall)
        raise AssertionError("the cores kept talking")

    def next_timer(self) -> float | None:
        deadlines = [d for d in (self.a.next_timer(), self.b.next_timer()) if d is not None]
        return min(deadlines) if deadlines else None

    def advance(self, to: float) -> None:
        """Fire every timer up to `to` in order, pumping the network after each."""
        self.pump()
        while (deadline := self.next_timer()) is not None and deadline <= to:
            self.now = max(self.now, deadline)
            self.a.handle_timer(self.now, self.wall)
            self.b.handle_timer(self.now, self.wall)
            self.pump()
        self.now = max(self.now, to)

    def a_sends(self, payload: bytes = b"x") -> bool:
        ok = self.a.send_packet(ip4(A_IP, B_IP, payload), self.now, self.wall)
        self.pump()
        return ok

    def b_sends(self, payload: bytes = b"y") -> bool:
        ok = self.b.send_packet(ip4(B_IP, A_IP, payload), self.now, self.wall)
        self.pump()
        return ok

    def established(self) -> None:
        """A session initiated by A now and confirmed by A's keepalive, leaving no timer but
        zero_key_material pending: switching persistent keepalive on sends a keepalive, which
        needs a session, so A initiates; it is switched off again at once."""
        self.a.add_or_update_peer(self.b.public_key, now=self.now, persistent_keepalive=1)
        self.a.handle_timer(self.now, self.wall)
        self.a.add_or_update_peer(self.b.public_key, now=self.now, persistent_keepalive=0)
        self.pump()
        assert self.ab.current is not None and self.ba.current is not None


def drops(core: WireGuardCore) -> dict[str, int]:
    """The core's drops by reason, from its counters."""
    return {k[5:]: n for k, n in core.counters().items() if k.startswith("drop_") and n}


def payloads(delivered: list) -> list[bytes]:
    """The UDP payloads (after the 20-byte IPv4 header) of delivered packets."""
    return [packet[20:] for _, packet in delivered]
