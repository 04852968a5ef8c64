"""The exit's flow limits against a reference model (hypothesis stateful).

Four peers open UDP flows and TCP connections (real packets through the sans-IO exit, a fake
host that connects at once), finish connections (they become reclaimable: TIME-WAIT) and reset
them, with small limits so the table is full most of the time. The model knows every flow's
peer, kind, last activity and whether it is reclaimable. For each new flow it replays the rules
of `exit.limits` step by step: every flow the exit dropped to make room must be one the rules
allow at that step (the oldest reclaimable connection, the least recently used UDP flow or live
connection of the right peer), and the exit must admit or refuse exactly when the rules do.
Invariants after every step: the model's flows are exactly the exit's, `Limits.audit()` holds,
and the fairness property: a peer below its fair share is never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tether.netstack.exit import ExitConfig, TcpConnect, UdpOpen
from tether.netstack.wire import build_udp_packet

from .support import NET4, FakeHost, Harness, PeerTcp

PEERS = [bytes([65 + i]) * 32 for i in range(4)]
ADDR = {key: bytes([10, 9, 0, 2 + i]) for i, key in enumerate(PEERS)}
MAX_FLOWS, PER_PEER = 10, 6
CFG = ExitConfig(max_flows=MAX_FLOWS, max_flows_per_peer=PER_PEER)


@dataclass
class Entry:
    peer: bytes
    kind: str  # "udp" | "tcp"
    last: float
    reclaimable_at: int | None = None  # order in which connections became reclaimable
    client: PeerTcp | None = None


class LimitsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(config=CFG)
        self.host = FakeHost(self.h, auto_connect=True)
        self.flows: dict = {}  # exit flow object -> Entry
        self.port = 20000
        self.finished = 0

    # -- the model -------------------------------------------------------------------------

    def count(self, peer: bytes) -> int:
        return sum(1 for e in self.flows.values() if e.peer == peer)

    def holders(self) -> set[bytes]:
        return {e.peer for e in self.flows.values()}

    def reclaimable(self, peer: bytes | None = None) -> list:
        flows = [
            (e.reclaimable_at, f)
            for f, e in self.flows.items()
            if e.reclaimable_at is not None and (peer is None or e.peer == peer)
        ]
        return [f for _, f in sorted(flows, key=lambda t: t[0])]

    def least_recent(self, peer: bytes, kind: str) -> set:
        flows = [
            (e.last, f)
            for f, e in self.flows.items()
            if e.peer == peer and e.kind == kind and e.reclaimable_at is None
        ]
        if not flows:
            return set()
        oldest = min(t for t, _ in flows)
        return {f for t, f in flows if t == oldest}

    def share(self, peer: bytes) -> int:
        holders = len(self.holders() | {peer})
        return min(PER_PEER, MAX_FLOWS // holders)

    def admission(self, peer: bytes, dropped: list) -> bool:
        """Replay the rules against the flows the exit dropped; returns whether to admit."""
        dropped = list(dropped)

        def take(legal: set) -> None:
            assert dropped, f"the exit kept everything; it had to drop one of {legal}"
            victim = dropped.pop(0)
            assert victim in legal, f"{victim} dropped; the rules allow only {legal}"
            del self.flows[victim]

        while self.count(peer) >= PER_PEER:
            own = self.reclaimable(peer)
            legal = {own[0]} if own else self.least_recent(peer, "udp")
            if not legal:
                assert not dropped
                return False
            take(legal)
        while len(self.flows) >= MAX_FLOWS:
            every = self.reclaimable()
            if every:
                take({every[0]})
                continue
            mine = self.count(peer)
            if mine < self.share(peer):
                counts = {p: self.count(p) for p in self.holders() - {peer}}
                most = max(counts.values())
                assert most > mine + 1, "fairness: someone must hold more than the share"
                legal = set()
                for p, n in counts.items():
                    if n == most:
                        legal |= self.least_recent(p, "udp") or self.least_recent(p, "tcp")
                take(legal)
                continue
            legal = self.least_recent(peer, "udp")
            if not legal:
                assert not dropped
                return False
            take(legal)
        assert not dropped, f"{dropped} dropped beyond what the rules ask"
        return True

    def closed_by_exit(self) -> list:
        table = set(self.h.x.udp.flows.values()) | set(self.h.x.tcp.flows.values())
        return [f for f in self.flows if f not in table]

    def tick(self) -> float:
        self.h.now += 0.001
        return self.h.now

    # -- rules -----------------------------------------------------------------------------

    @rule(peer=st.sampled_from(PEERS), reuse=st.booleans())
    def udp(self, peer, reuse):
        now = self.tick()
        mine = [f for f, e in self.flows.items() if e.peer == peer and e.kind == "udp"]
        if reuse and mine:
            flow = mine[0]
            self.h.deliver(build_udp_packet(ADDR[peer], NET4, flow.sport, 9, b"x"), peer)
            self.h.actions()
            self.flows[flow].last = now
            return
        self.port += 1
        expected_share, below = self.share(peer), self.count(peer)
        self.h.deliver(build_udp_packet(ADDR[peer], NET4, self.port, 9, b"x"), peer)
        opened = [a.flow for a in self.h.actions() if type(a) is UdpOpen]
        admit = self.admission(peer, self.closed_by_exit())
        assert bool(opened) == admit
        if not admit:
            assert below >= expected_share, "a peer below its fair share was refused"
        for flow in opened:
            self.flows[flow] = Entry(peer, "udp", now)

    @rule(peer=st.sampled_from(PEERS))
    def tcp_open(self, peer):
        now = self.tick()
        self.port += 1
        client = PeerTcp(ADDR[peer], NET4, self.port, 80)
        expected_share, below = self.share(peer), self.count(peer)
        self.h.deliver(client.syn(), peer)
        acts = self.h.x.take_actions()
        opened = [a.flow for a in acts if type(a) is TcpConnect]
        admit = self.admission(peer, self.closed_by_exit())
        assert bool(opened) == admit
        if not admit:
            assert below >= expected_share, "a peer below its fair share was refused"
            return
        (flow,) = opened
        self.h.x.receive_tcp_connected(flow, now)  # the fake host connects at once
        self.flows[flow] = Entry(peer, "tcp", now, client=client)
        self._exchange(flow, [])
        assert client.state == "ESTABLISHED"

    def _exchange(self, flow, packets) -> None:
        client = self.flows[flow].client
        key = self.flows[flow].peer
        for _ in range(100):
            for p in packets:
                self.h.deliver(p, key)
            self.host.run()
            out = [
                p
                for p in self.h.out()
                if p[16:20] == ADDR[key] and p[22:24] == client.sport.to_bytes(2, "big")
            ]
            packets = []
            for p in out:
                packets += client.receive(p)
            packets += client.output()
            if not packets:
                break

    def live_tcp(self):
        return [f for f, e in self.flows.items() if e.kind == "tcp" and e.reclaimable_at is None]

    @precondition(lambda self: self.live_tcp())
    @rule(data=st.data())
    def tcp_finish(self, data):
        flow = data.draw(st.sampled_from(self.live_tcp()))
        entry = self.flows[flow]
        entry.last = self.tick()
        # The server closes first: the exit ends in TIME-WAIT.
        self.h.x.receive_tcp_eof(flow, self.h.now)
        self._exchange(flow, [])
        entry.client.close()
        self._exchange(flow, entry.client.output())
        assert flow.reclaimable and flow.conn.state.name == "TIME_WAIT"
        self.finished += 1
        entry.reclaimable_at = self.finished

    @precondition(lambda self: self.live_tcp())
    @rule(data=st.data())
    def tcp_reset(self, data):
        flow = data.draw(st.sampled_from(self.live_tcp()))
        self.tick()
        self.h.deliver(self.flows[flow].client.rst(), self.flows[flow].peer)
        self.h.actions()
        del self.flows[flow]

    @invariant()
    def same_flows_and_books(self):
        assert self.closed_by_exit() == []
        table = set(self.h.x.udp.flows.values()) | set(self.h.x.tcp.flows.values())
        assert table == set(self.flows)
        for flow, entry in self.flows.items():
            assert flow.reclaimable == (entry.reclaimable_at is not None)
        self.h.x.audit()


LimitsModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_limits_against_the_model = LimitsModel.TestCase
