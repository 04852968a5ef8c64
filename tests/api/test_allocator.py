"""The allocator against a brute-force model over random subnets, reservations and removals."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tether.api.peers.allocator import Allocator, Exhausted


def brute_force_next(addresses, peers) -> list | None:
    picks = []
    seen = set()
    for iface in addresses:
        net = iface.network
        if net in seen or net.num_addresses == 1:
            continue
        seen.add(net)
        own = None if iface.ip == net.network_address else iface.ip
        hosts = list(net) if net.num_addresses <= 2 else list(net)[1:]
        if net.version == 4 and net.num_addresses > 2:
            hosts = hosts[:-1]
        free = [
            h for h in hosts if h != own and not any(h in allowed for p in peers for allowed in p)
        ]
        if not free:
            return None
        picks.append(ipaddress.ip_network((free[0], net.max_prefixlen)))
    return picks


class AllocatorMachine(RuleBasedStateMachine):
    @initialize(
        v4_prefix=st.integers(26, 30),
        v6_prefix=st.integers(122, 126),
        own_v4=st.integers(0, 3),
        dual=st.booleans(),
    )
    def setup(self, v4_prefix, v6_prefix, own_v4, dual):
        base4 = ipaddress.ip_network(f"10.7.0.0/{v4_prefix}")
        own = list(base4)[min(own_v4, base4.num_addresses - 1)]
        self.addresses = [ipaddress.ip_interface(f"{own}/{v4_prefix}")]
        if dual:
            self.addresses.append(ipaddress.ip_interface(f"fd07::1/{v6_prefix}"))
        self.peers: list[list] = []
        self.alloc = Allocator(self.addresses)

    @rule(data=st.data())
    def hand_added_peer(self, data):
        v4 = self.addresses[0].network
        length = data.draw(st.integers(v4.prefixlen - 1, 32))
        offset = data.draw(st.integers(0, v4.num_addresses * 2))
        net = ipaddress.ip_network((int(v4.network_address) + offset, length), strict=False)
        allowed = [net]
        if data.draw(st.booleans()):
            allowed.append(ipaddress.ip_network("0.0.0.0/0"))  # a site peer routing everything
        self.peers.append(allowed)
        self.alloc.add_peer(allowed)

    @rule()
    def allocate(self):
        expected = brute_force_next(self.addresses, self.peers)
        if expected is None:
            with pytest.raises(Exhausted):
                self.alloc.allocate()
            return
        got = self.alloc.allocate()
        assert got == expected
        self.peers.append(got)

    @precondition(lambda self: self.peers)
    @rule(data=st.data())
    def remove_peer(self, data):
        i = data.draw(st.integers(0, len(self.peers) - 1))
        allowed = self.peers.pop(i)
        self.alloc.remove_peer(allowed)

    @invariant()
    def lowest_free_matches(self):
        expected = brute_force_next(self.addresses, self.peers)
        picks = []
        try:
            picks = [
                ipaddress.ip_network((p.next_free(), p.subnet.max_prefixlen))
                for p in self.alloc.pools
            ]
        except Exhausted:
            assert expected is None
            return
        assert picks == expected


AllocatorMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestAllocator = AllocatorMachine.TestCase


def test_article_example():
    # 192.168.90.0/24 with peer .1 → the next peer gets .2 (the article's answer)
    alloc = Allocator(
        [ipaddress.ip_interface("192.168.90.0/24")], [[ipaddress.ip_network("192.168.90.1/32")]]
    )
    assert alloc.allocate() == [ipaddress.ip_network("192.168.90.2/32")]


def test_dual_stack_and_own_address_skipped():
    alloc = Allocator([ipaddress.ip_interface("10.0.0.1/24"), ipaddress.ip_interface("fd00::1/64")])
    assert alloc.allocate() == [
        ipaddress.ip_network("10.0.0.2/32"),
        ipaddress.ip_network("fd00::2/128"),
    ]


def test_exhaustion_takes_nothing():
    alloc = Allocator([ipaddress.ip_interface("10.0.0.1/30"), ipaddress.ip_interface("fd00::1/64")])
    assert alloc.allocate()[0] == ipaddress.ip_network("10.0.0.2/32")
    with pytest.raises(Exhausted):
        alloc.allocate()
    # the IPv6 pool was not advanced by the failed attempt
    alloc.remove_peer([ipaddress.ip_network("10.0.0.2/32")])
    assert alloc.allocate()[1] == ipaddress.ip_network("fd00::3/128")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3000))
def test_many_adds_are_sequential(n):
    alloc = Allocator([ipaddress.ip_interface("10.0.0.1/16")])
    for _ in range(n):
        net = alloc.allocate()[0]
    assert int(net.network_address) == int(ipaddress.ip_address("10.0.0.1")) + n


def test_a_host_route_given_back_is_cut_out_without_a_rebuild():
    """The fleet's add uncovers its address and covers it again when etcd confirms it: with
    host routes only, that splits one interval instead of rebuilding them all (10,000 peers)."""
    base = int(ipaddress.ip_address("10.0.0.2"))
    hosts = [ipaddress.ip_network((base + i, 32)) for i in range(1000)]
    alloc = Allocator([ipaddress.ip_interface("10.0.0.1/16")], [[h] for h in hosts])
    pool = alloc.pools[0]
    for _ in range(20):
        net = alloc.allocate()
        alloc.remove_peer(net)
        assert not pool._dirty
        alloc.add_peer(net)
    alloc.remove_peer([hosts[500]])
    assert not pool._dirty
    split = (list(pool._starts), list(pool._ends))
    pool._rebuild()
    assert split == (pool._starts, pool._ends)
    assert alloc.allocate() == [hosts[500]]
