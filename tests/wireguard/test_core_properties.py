"""Two cores talking through a lossy, reordering, duplicating, replaying network (Hypothesis).

A generated schedule sends packets, delivers in-flight datagrams in any order, duplicates,
drops and replays them, advances a fake clock (firing timers) and pushes send counters to the
edge of their limits. Throughout:

- every delivered packet is one that was sent, byte for byte, to that peer, and at most once;
- no transport message is sealed with a session older than REJECT_AFTER_TIME or with a counter
  at or past REJECT_AFTER_MESSAGES.

Then the network becomes lossless and both sides keep talking: traffic must flow again, and
sessions must be renewed on time (no sending session older than REKEY_AFTER_TIME plus the
slack the protocol allows).
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import keys
from tether.wireguard.constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)
from tether.wireguard.core import WireGuardCore

from .support import A_ADDR, A_IP, B_ADDR, B_IP, WALL_OFFSET, ip4

_KEYS = [keys.generate_private() for _ in range(2)]


class Sim:
    def __init__(self, seed: int, b_knows_a: bool) -> None:
        rng = random.Random(seed)
        self.now = 0.0
        self.cores = {
            "a": WireGuardCore(_KEYS[0], rng=random.Random(rng.random())),
            "b": WireGuardCore(_KEYS[1], rng=random.Random(rng.random())),
        }
        a, b = self.cores["a"], self.cores["b"]
        self.addr = {"a": A_ADDR, "b": B_ADDR}
        self.ip = {"a": A_IP, "b": B_IP}
        self.peer = {
            "a": a.add_or_update_peer(
                b.public_key, now=0.0, endpoint=B_ADDR, allowed_ips=["10.0.0.2/32"]
            ),
            "b": b.add_or_update_peer(
                a.public_key,
                now=0.0,
                endpoint=A_ADDR if b_knows_a else None,
                allowed_ips=["10.0.0.1/32"],
            ),
        }
        self.in_flight: list[tuple[str, bytes]] = []  # (destination side, datagram)
        self.history: list[tuple[str, bytes]] = []
        self.sent: dict[int, tuple[str, bytes]] = {}  # packet id -> (sender side, packet)
        self.delivered_ids: set[int] = set()
        self.seen_sessions: dict[str, dict[int, list]] = {"a": {}, "b": {}}
        self.max_send_age = 0.0
        self.next_id = 0

    # ---------------------------------------------------------------- bookkeeping

    def _register_sessions(self) -> None:
        for side, peer in self.peer.items():
            for session in (peer.current, peer.previous, peer.next):
                if session is not None:
                    known = self.seen_sessions[side].setdefault(session.remote_index, [])
                    if not any(s is session for s in known):
                        known.append(session)

    def _collect(self, side: str) -> None:
        """Take one core's output, check it, and put it on the wire."""
        core = self.cores[side]
        self._register_sessions()
        other = "b" if side == "a" else "a"
        for datagram, endpoint in core.take_datagrams():
            assert endpoint == self.addr[other]
            if struct.unpack_from("<I", datagram)[0] == MESSAGE_TRANSPORT:
                _, receiver, counter = struct.unpack_from("<IIQ", datagram)
                assert counter < REJECT_AFTER_MESSAGES
                candidates = [
                    s
                    for s in self.seen_sessions[side].get(receiver, [])
                    if s.send_counter > counter
                ]
                assert candidates, "transport message from no known session"
                age = min(self.now - s.created for s in candidates)
                assert age < REJECT_AFTER_TIME
                self.max_send_age = max(self.max_send_age, age)
            self.in_flight.append((other, datagram))
            self.history.append((other, datagram))
        self._check_delivered(other)

    def _check_delivered(self, side: str) -> None:
        core = self.cores[side]
        for peer_key, packet in core.take_packets():
            assert peer_key == self.peer[side].public_key
            (packet_id,) = struct.unpack_from("!Q", packet, 20)
            sender, original = self.sent[packet_id]
            assert sender != side
            assert packet == original
            assert packet_id not in self.delivered_ids, "delivered twice"
            self.delivered_ids.add(packet_id)

    # ---------------------------------------------------------------- actions

    @property
    def wall(self) -> float:
        return self.now + WALL_OFFSET

    def send(self, side: str) -> int:
        packet_id = self.next_id
        self.next_id += 1
        other = "b" if side == "a" else "a"
        body = struct.pack("!Q", packet_id) + bytes([packet_id % 251]) * (packet_id % 97)
        packet = ip4(self.ip[side], self.ip[other], body)
        self.sent[packet_id] = (side, packet)
        self._register_sessions()
        assert self.cores[side].send_packet(packet, self.now, self.wall)
        self._collect(side)
        return packet_id

    def deliver(self, index: int, *, keep: bool = False) -> None:
        if not self.in_flight:
            return
        index %= len(self.in_flight)
        side, datagram = self.in_flight[index] if keep else self.in_flight.pop(index)
        self._inject(side, datagram)

    def _inject(self, side: str, datagram: bytes) -> None:
        other = "b" if side == "a" else "a"
        self._register_sessions()
        self.cores[side].receive_datagram(datagram, self.addr[other], self.now, self.wall)
        self._check_delivered(side)
        self._collect(side)

    def replay(self, index: int) -> None:
        if self.history:
            self._inject(*self.history[index % len(self.history)])

    def advance(self, dt: float, *, lossless: bool = False) -> None:
        end = self.now + dt
        while True:
            if lossless:
                self.flush()
            deadlines = [d for c in self.cores.values() if (d := c.next_timer()) is not None]
            if not deadlines or min(deadlines) > end:
                break
            self.now = max(self.now, min(deadlines))
            for side, core in self.cores.items():
                self._register_sessions()
                core.handle_timer(self.now, self.wall)
                self._collect(side)
        self.now = end

    def flush(self) -> None:
        """Deliver everything in flight, in order, until the network is quiet."""
        for _ in range(1000):
            if not self.in_flight:
                return
            self.deliver(0)
        raise AssertionError("the cores kept talking")

    def exhaust(self, side: str, limit: int) -> None:
        session = self.peer[side].current
        if session is not None and session.send_counter < limit - 2:
            session.send_counter = limit - 2


_STEPS = st.one_of(
    st.tuples(st.just("send"), st.sampled_from("ab")),
    st.tuples(st.just("deliver"), st.integers(0, 63)),
    st.tuples(st.just("duplicate"), st.integers(0, 63)),
    st.tuples(st.just("drop"), st.integers(0, 63)),
    st.tuples(st.just("replay"), st.integers(0, 1023)),
    st.tuples(
        st.just("advance"), st.sampled_from([0.01, 0.4, 3.0, 5.2, 11.0, 16.0, 60.0, 125.0, 541.0])
    ),
    st.tuples(st.just("exhaust"), st.sampled_from(["a", "b", "A", "B"])),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.integers(0, 2**32), st.booleans(), st.lists(_STEPS, max_size=60))
def test_lossy_network_never_corrupts_duplicates_or_misuses_keys(seed, b_knows_a, steps):
    sim = Sim(seed, b_knows_a)
    for op, arg in steps:
        if op == "send":
            sim.send(arg)
        elif op == "deliver":
            sim.deliver(arg)
        elif op == "duplicate":
            sim.deliver(arg, keep=True)
        elif op == "drop":
            if sim.in_flight:
                sim.in_flight.pop(arg % len(sim.in_flight))
        elif op == "replay":
            sim.replay(arg)
        elif op == "advance":
            sim.advance(arg)
        elif op == "exhaust":
            limit = REJECT_AFTER_MESSAGES if arg.isupper() else REKEY_AFTER_MESSAGES + 2
            sim.exhaust(arg.lower(), limit)

    # Lossless from here on: both sides send every second for 400 s.
    sim.flush()
    start = sim.now
    completed = sum(core.counters()["handshakes_completed"] for core in sim.cores.values())
    late: list[int] = []
    for second in range(400):
        for side in "ab":
            packet_id = sim.send(side)
            if second >= 30:
                late.append(packet_id)
        sim.advance(1.0, lossless=True)
        if second == 150:
            sim.max_send_age = 0.0  # from here on, every session must have been renewed on time
    sim.flush()
    missing = [i for i in late if i not in sim.delivered_ids]
    assert not missing, f"{len(missing)} packets lost after {sim.now - start:.0f} s lossless"
    assert sim.max_send_age <= REKEY_AFTER_TIME + REKEY_TIMEOUT + 2
    # At least three rekeys in 400 s, each completed on both sides.
    handshakes = sum(core.counters()["handshakes_completed"] for core in sim.cores.values())
    assert handshakes >= completed + 6
    # Replaying everything ever sent delivers nothing new.
    before = len(sim.delivered_ids)
    for index in range(len(sim.history)):
        sim.replay(index)
    sim.in_flight.clear()
    assert len(sim.delivered_ids) == before
