"""Cryptokey routing: unit tests and a brute-force longest-prefix model under Hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.wireguard.allowedips import AllowedIPs

net = ipaddress.ip_network


class Peer:
    """Peers are compared by identity, so two equal-looking peers must stay apart."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and other.name == self.name

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_longest_prefix_wins():
    t, a, b, c = AllowedIPs(), Peer("a"), Peer("b"), Peer("c")
    t.insert(net("0.0.0.0/0"), a)
    t.insert(net("10.0.0.0/8"), b)
    t.insert(net("10.1.2.3/32"), c)
    assert t.lookup(ip("10.1.2.3")) is c
    assert t.lookup(ip("10.1.2.4")) is b
    assert t.lookup(ip("11.0.0.0")) is a
    assert t.lookup(ip("::1")) is None


def test_families_are_separate_and_mapped_v6_is_v6():
    t, a, b = AllowedIPs(), Peer("a"), Peer("b")
    t.insert(net("::ffff:10.0.0.0/104"), a)
    t.insert(net("10.0.0.0/8"), b)
    assert t.lookup(ip("::ffff:10.1.1.1")) is a
    assert t.lookup(ip("10.1.1.1")) is b
    t.insert(net("fd00::/8"), b)
    assert t.lookup(ip("fdff::1")) is b
    assert t.lookup(ip("fe00::1")) is None


def test_host_bits_are_masked():
    t, a = AllowedIPs(), Peer("a")
    assert t.insert("10.1.2.3/8", a) == net("10.0.0.0/8")
    assert t.insert(ipaddress.ip_interface("fd00::7/64"), a) == net("fd00::/64")
    assert t.entries_for_peer(a) == [net("10.0.0.0/8"), net("fd00::/64")]
    assert t.lookup(ip("10.200.0.1")) is a
    assert t.remove("10.9.9.9/8", a)  # removal masks as well
    assert t.lookup(ip("10.200.0.1")) is None


def test_insert_moves_ownership():
    t, a, b = AllowedIPs(), Peer("a"), Peer("b")
    t.insert(net("10.0.0.0/24"), a)
    t.insert(net("10.0.1.0/24"), a)
    t.insert(net("10.0.0.0/24"), b)
    assert t.lookup(ip("10.0.0.1")) is b
    assert t.entries_for_peer(a) == [net("10.0.1.0/24")]
    assert t.entries_for_peer(b) == [net("10.0.0.0/24")]
    assert len(t) == 2


def test_remove_only_by_owner():
    t, a, b = AllowedIPs(), Peer("a"), Peer("b")
    t.insert(net("10.0.0.0/24"), a)
    assert not t.remove(net("10.0.0.0/24"), b)
    assert not t.remove(net("10.0.0.0/24"), Peer("a"))  # equal but not the same peer
    assert not t.remove(net("10.0.0.0/25"), a)
    assert t.lookup(ip("10.0.0.1")) is a
    assert t.remove(net("10.0.0.0/24"), a)
    assert t.lookup(ip("10.0.0.1")) is None
    assert t.entries_for_peer(a) == []
    assert not t.remove(net("10.0.0.0/24"), a)


def test_remove_by_peer():
    t, a, b = AllowedIPs(), Peer("a"), Peer("b")
    for i in range(10):
        t.insert(net(f"10.0.{i}.0/24"), a)
        t.insert(net(f"fd00:{i}::/32"), b)
    t.insert(net("0.0.0.0/0"), b)
    t.remove_by_peer(a)
    assert t.entries_for_peer(a) == []
    assert t.lookup(ip("10.0.3.1")) is b
    assert len(t.entries_for_peer(b)) == 11
    t.remove_by_peer(a)  # nothing left: no error
    t.remove_by_peer(b)
    assert len(t) == 0
    assert t.lookup(ip("10.0.3.1")) is None


def test_entries_in_order_of_most_recent_insert():
    # wireguard-go appends to the peer's list on every insert, even of a prefix it already owns.
    t, a = AllowedIPs(), Peer("a")
    for text in ("10.0.0.0/8", "fd00::/8", "192.168.0.0/16"):
        t.insert(net(text), a)
    t.insert(net("10.0.0.0/8"), a)
    assert t.entries_for_peer(a) == [net("fd00::/8"), net("192.168.0.0/16"), net("10.0.0.0/8")]


def test_zero_length_and_full_length():
    t, a, b = AllowedIPs(), Peer("a"), Peer("b")
    t.insert(net("::/0"), a)
    t.insert(net("::1/128"), b)
    assert t.lookup(ip("::1")) is b
    assert t.lookup(ip("::2")) is a
    assert t.lookup(bytearray(16)) is a


def test_bad_inputs():
    t = AllowedIPs()
    with pytest.raises(ValueError):
        t.lookup(b"\x00" * 5)
    with pytest.raises(ValueError):
        t.insert(net("10.0.0.0/8"), None)


# --- model-based ---------------------------------------------------------------------------

PEERS = [Peer(str(i)) for i in range(4)]


def brute_force(owners: dict, address: ipaddress._BaseAddress):
    matches = [
        (network.prefixlen, peer)
        for network, peer in owners.items()
        if network.version == address.version and address in network
    ]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def networks(version: int) -> st.SearchStrategy:
    width = 32 if version == 4 else 128
    # Addresses clustered in a few regions so prefixes nest and collide often.
    high = st.sampled_from([0, 1, 0xA, 0xFD, (1 << 8) - 1])
    low = st.integers(0, 1 << 12)
    address = st.builds(lambda h, lo: (h << (width - 8)) | lo, high, low)
    length = st.one_of(st.integers(0, width), st.sampled_from([0, 8, width - 12, width]))
    return st.builds(
        lambda a, n: (
            ipaddress.ip_network((a, n), strict=False)
            if version == 4
            else ipaddress.IPv6Network((a, n), strict=False)
        ),
        address,
        length,
    )


operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "insert", "remove", "remove_by_peer"]),
        st.one_of(networks(4), networks(6)),
        st.integers(0, len(PEERS) - 1),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(st.one_of(networks(4), networks(6)), max_size=30))
def test_matches_brute_force(ops, probes):
    table, owners, order = AllowedIPs(), {}, {id(p): [] for p in PEERS}
    for op, network, which in ops:
        peer = PEERS[which]
        if op == "insert":
            old = owners.get(network)
            if old is not None:
                order[id(old)].remove(network)
            owners[network] = peer
            order[id(peer)].append(network)
            table.insert(network, peer)
        elif op == "remove":
            owned = owners.get(network) is peer
            if owned:
                del owners[network]
                order[id(peer)].remove(network)
            assert table.remove(network, peer) == owned
        else:
            for n in order[id(peer)]:
                del owners[n]
            order[id(peer)] = []
            table.remove_by_peer(peer)
    for peer in PEERS:
        assert table.entries_for_peer(peer) == order[id(peer)]
    assert len(table) == len(owners)
    addresses = [n.network_address for n in probes] + [n.broadcast_address for n in probes]
    addresses += [n.network_address for n in owners] + [n.broadcast_address for n in owners]
    for address in addresses:
        assert table.lookup(address.packed) is brute_force(owners, address), address
    for network in probes + list(owners):
        covering = [
            (n.prefixlen, p)
            for n, p in owners.items()
            if n.version == network.version and network.subnet_of(n)
        ]
        expected = max(covering, key=lambda m: m[0])[1] if covering else None
        assert table.owner_of(network) is expected, network
