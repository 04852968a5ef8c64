"""The exit's destination policy (DESIGN.md §3a) against a table of addresses, and a property
comparing `ExitPolicy.classify` with a reference written independently on `ipaddress` networks.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.netstack.exit import DROP, HOST, OWN, PEER, REFUSE, ExitPolicy

ADDRESSES = ["10.9.0.1/24", "fd00:9::1/64"]
HOST_ADDRESSES = ["93.184.216.34", "2606:2800:220:1::1"]  # the host's own, public ones
HOST_BROADCASTS = ["93.184.216.255"]
PUBLIC = ["8.8.4.4", "2001:4860:4860::8844"]  # --public-ipv4/-ipv6 (behind NAT: no interface)
METADATA = ["169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200", "192.0.0.192"]


def policy(**kw) -> ExitPolicy:
    kw.setdefault("host_addresses", HOST_ADDRESSES)
    kw.setdefault("host_broadcasts", HOST_BROADCASTS)
    kw.setdefault("public_addresses", PUBLIC)
    return ExitPolicy(ADDRESSES, **kw)


def verdict(p: ExitPolicy, address: str) -> int:
    packed = ipaddress.ip_address(address).packed
    v = p.classify(packed)
    assert p.classify(packed) == v  # the cached answer is the same
    return v


def first_middle_last(network: str) -> list[str]:
    net = ipaddress.ip_network(network)
    last = net.broadcast_address
    if str(last) == "255.255.255.255":
        last -= 1  # the limited broadcast is dropped, not refused
    middle = net.network_address + net.num_addresses // 2
    return [str(net.network_address), str(middle), str(last)]


# (range, refused by default, lifted by --allow-local-destinations)
REFUSED = [
    ("0.0.0.0/8", False),
    ("10.0.0.0/8", False),
    ("100.64.0.0/10", False),
    ("127.0.0.0/8", True),
    ("169.254.0.0/16", True),
    ("172.16.0.0/12", False),
    ("192.0.0.0/24", False),
    ("192.0.2.0/24", False),
    ("192.168.0.0/16", False),
    ("198.18.0.0/15", False),
    ("198.51.100.0/24", False),
    ("203.0.113.0/24", False),
    ("240.0.0.0/4", False),
    ("::1/128", True),
    ("fe80::/10", True),
    ("fc00::/7", False),
    ("fec0::/10", False),
    ("64:ff9b:1::/48", False),
    ("100::/64", False),
    ("100:0:0:1::/64", False),
    ("2001:2::/48", False),
    ("2001:10::/28", False),
    ("2001:100::/24", False),  # the upper half of 2001::/23
    ("2001:db8::/32", False),
    ("3fff::/20", False),
    ("5f00::/16", False),
]


@pytest.mark.parametrize(
    "address, local",
    [(a, local) for net, local in REFUSED for a in first_middle_last(net)],
)
def test_default_refused_ranges_first_middle_last(address, local):
    assert verdict(policy(), address) == REFUSE
    lifted = verdict(policy(allow_local=True), address)
    if address == "169.254.169.254":
        assert lifted == REFUSE
    else:
        assert lifted == (HOST if local else REFUSE)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.33", "192.31.196.1", "192.88.99.1", "100.63.255.255",
     "100.128.0.0", "172.15.255.255", "172.32.0.0", "198.17.255.255", "198.20.0.0",
     "223.255.255.255",
     "2606:4700::1111", "2001:4860:4860::8888", "2001:3::1", "2001:4:112::1", "2001:20::1",
     "2001:30::1", "2001:200::1", "2620:4f:8000::1", "64:ff9b:2::1", "fbff:ffff::1", "fe00::1"],
)  # fmt: skip
def test_the_internet_is_open(address):
    assert verdict(policy(), address) == HOST


@pytest.mark.parametrize(
    "address",
    ["224.0.0.1", "224.0.0.251", "239.255.255.250", "255.255.255.255", "93.184.216.255",
     "10.9.0.0", "10.9.0.255", "ff02::1", "ff02::fb", "ff0e::1"],
)  # fmt: skip
def test_multicast_and_broadcast_are_dropped_even_when_allowed(address):
    assert verdict(policy(), address) == DROP
    assert verdict(policy(allow=["0.0.0.0/0", "::/0"]), address) == DROP


@pytest.mark.parametrize("address", METADATA)
def test_metadata_needs_to_be_named_exactly(address):
    addr = ipaddress.ip_address(address)
    assert verdict(policy(), address) == REFUSE
    assert verdict(policy(allow_local=True), address) == REFUSE
    wide = ["0.0.0.0/0", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "::/0", "fd00::/8"]
    assert verdict(policy(allow=wide), address) == REFUSE
    assert verdict(policy(allow=[f"{addr}/{addr.max_prefixlen}"]), address) == HOST
    named = policy(allow=[address], deny=[f"{addr}/{addr.max_prefixlen}"])
    assert verdict(named, address) == REFUSE  # deny wins here too


def embedded_forms(v4: str) -> dict[str, str]:
    a = int(ipaddress.IPv4Address(v4))
    return {
        "mapped": str(ipaddress.IPv6Address((0xFFFF << 32) | a)),
        "siit": str(ipaddress.IPv6Address((0xFFFF << 48) | a)),
        "compatible": str(ipaddress.IPv6Address(a)),
        "nat64": str(ipaddress.IPv6Address((0x64FF9B << 96) | a)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (a << 80) | 0x1234)),
        "teredo": str(ipaddress.IPv6Address((0x20010000 << 96) | (0x01020304 << 64) | a ^ M32)),
    }


M32 = 0xFFFFFFFF
FORMS = list(embedded_forms("8.8.8.8"))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "v4",
    ["10.1.2.3", "127.0.0.1", "169.254.169.254", "192.168.1.1", "100.100.100.200",
     "198.18.2.2", "0.0.0.0", "240.1.2.3", "224.0.0.1", "93.184.216.34", "8.8.4.4",
     "10.9.0.1", "10.9.0.2"],
)  # fmt: skip
def test_embedded_refused_ipv4_is_refused(form, v4):
    assert verdict(policy(peer_to_peer=True), embedded_forms(v4)[form]) == REFUSE


@pytest.mark.parametrize("form", FORMS)
def test_embedded_forms_are_judged_as_their_ipv4(form):
    public = embedded_forms("8.8.8.8")[form]
    lan = embedded_forms("10.1.2.3")[form]
    assert verdict(policy(), public) == HOST
    assert verdict(policy(deny=["8.8.8.0/24"]), public) == REFUSE
    assert verdict(policy(allow=["10.0.0.0/8"]), lan) == HOST  # opened like its IPv4
    assert verdict(policy(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"]), lan) == REFUSE
    # an IPv6 range never opens an IPv4 address inside it, but may refuse one
    assert verdict(policy(allow=["::/0"]), lan) == REFUSE
    assert verdict(policy(deny=[f"{public}/128"]), public) == REFUSE
    loop = embedded_forms("127.0.0.1")[form]
    assert verdict(policy(allow_local=True), loop) == HOST


def test_teredo_client_address_is_the_inverted_last_32_bits():
    # 2001:0:4136:e378:8000:63bf:3fff:fdd2 is RFC 4380's example: client 192.0.2.45
    assert verdict(policy(), "2001:0:4136:e378:8000:63bf:3fff:fdd2") == REFUSE
    assert verdict(policy(allow=["192.0.2.45/32"]), "2001:0:4136:e378:8000:63bf:3fff:fdd2") == HOST


def test_local_use_nat64_is_refused_whole_and_can_be_opened():
    assert verdict(policy(), "64:ff9b:1::808:808") == REFUSE
    assert verdict(policy(), "64:ff9b:1:abcd::808:808") == REFUSE
    assert verdict(policy(allow=["64:ff9b:1::/48"]), "64:ff9b:1::808:808") == HOST


def test_unspecified_is_never_opened():
    p = policy(allow=["0.0.0.0/0", "::/0"], allow_local=True)
    for address in ("0.0.0.0", "0.1.2.3", "::"):
        assert verdict(p, address) == REFUSE


@pytest.mark.parametrize("address", HOST_ADDRESSES + PUBLIC)
def test_the_hosts_own_and_public_addresses(address):
    assert verdict(policy(), address) == REFUSE
    assert verdict(policy(allow_local=True), address) == HOST
    assert verdict(policy(public_addresses=(), host_addresses=()), address) == HOST


def test_a_host_address_in_a_refused_range_is_lifted_by_allow_local():
    p = policy(host_addresses=["10.0.0.5"], allow_local=True)
    assert verdict(p, "10.0.0.5") == HOST
    assert verdict(p, "10.0.0.6") == REFUSE  # its LAN neighbours are not


@pytest.mark.parametrize(
    "allow, address",
    [("10.0.0.0/8", "10.1.2.3"), ("192.168.7.0/24", "192.168.7.9"), ("127.0.0.0/8", "127.0.0.1"),
     ("198.18.2.0/24", "198.18.2.2"), ("fd18:2::/64", "fd18:2::2"), ("fe80::/10", "fe80::1"),
     ("100.64.0.0/10", "100.64.0.1"), ("240.0.0.0/4", "240.0.0.1"), ("fec0::/10", "fec0::1")],
)  # fmt: skip
def test_allow_destinations_opens_a_refused_range(allow, address):
    assert verdict(policy(), address) == REFUSE
    assert verdict(policy(allow=[allow]), address) == HOST


def test_deny_wins_over_allow_and_over_the_defaults():
    p = policy(allow=["10.0.0.0/8", "fd18::/16"], deny=["10.1.0.0/16", "8.8.8.0/24", "fd18:2::/64"])
    assert verdict(p, "10.2.0.1") == HOST
    assert verdict(p, "10.1.2.3") == REFUSE
    assert verdict(p, "8.8.8.8") == REFUSE
    assert verdict(p, "fd18:1::1") == HOST
    assert verdict(p, "fd18:2::2") == REFUSE
    assert verdict(policy(deny=["127.0.0.0/8"], allow_local=True), "127.0.0.1") == REFUSE


def test_peer_to_peer_off_by_default():
    p = policy()
    assert verdict(p, "10.9.0.2") == REFUSE
    assert verdict(p, "fd00:9::77") == REFUSE
    assert verdict(p, "10.9.0.1") == OWN and verdict(p, "fd00:9::1") == OWN
    assert verdict(p, "10.9.0.255") == DROP
    # a LAN opened around the tunnel subnet does not open the peers
    assert verdict(policy(allow=["10.0.0.0/8"]), "10.9.0.2") == REFUSE


def test_peer_to_peer_on():
    p = policy(peer_to_peer=True)
    assert verdict(p, "10.9.0.2") == PEER
    assert verdict(p, "fd00:9::77") == PEER
    assert verdict(p, "10.9.0.1") == OWN
    denied = policy(peer_to_peer=True, deny=["10.9.0.5/32", "fd00:9::1/128"])
    assert verdict(denied, "10.9.0.5") == REFUSE and verdict(denied, "10.9.0.6") == PEER
    assert verdict(denied, "fd00:9::1") == OWN  # the device's own addresses always answer


def test_set_rules_and_addresses_reset_the_cache():
    p = policy()
    assert verdict(p, "10.10.0.5") == REFUSE
    p.set_rules(allow=["10.10.0.0/16"])
    assert verdict(p, "10.10.0.5") == HOST
    p.set_addresses(["10.9.0.1/24", "10.10.0.1/16"])
    assert verdict(p, "10.10.0.5") == REFUSE  # a tunnel address now, and peer to peer is off
    p.set_rules(peer_to_peer=True)
    assert verdict(p, "10.10.0.5") == PEER
    assert verdict(p, "1.2.3.4") == HOST
    p.set_host_addresses(["1.2.3.4"])
    assert verdict(p, "1.2.3.4") == REFUSE
    p.set_public_addresses(["1.2.3.5"])
    assert verdict(p, "1.2.3.5") == REFUSE


def test_bare_network_address_is_a_subnet_without_own_address():
    p = ExitPolicy(["192.168.90.0/24"], peer_to_peer=True)
    assert verdict(p, "192.168.90.1") == PEER
    assert p.own4 is None


# -- the reference --------------------------------------------------------------------------
# Written from DESIGN.md §3a and the module docstring with ipaddress' own networks and helpers,
# sharing no table or bit trick with the implementation.

N = ipaddress.ip_network
REF_NEVER = [N("0.0.0.0/8"), N("::/128")]
REF_DROP = [N("224.0.0.0/4"), N("255.255.255.255/32"), N("ff00::/8")]
REF_LOCAL = [N("127.0.0.0/8"), N("169.254.0.0/16"), N("::1/128"), N("fe80::/10")]
REF_GLOBAL_EXCEPTIONS = [N("2001:3::/32"), N("2001:4:112::/48"), N("2001:20::/28"),
                         N("2001:30::/28")]  # fmt: skip
REF_REFUSED = [N(n) for n in (
    "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
    "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
    "fc00::/7", "fec0::/10", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64", "2001::/23",
    "2001:db8::/32", "3fff::/20", "5f00::/16",
)]  # fmt: skip
REF_METADATA = {ipaddress.ip_address(a) for a in METADATA}


def ref_carried_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]  # (server, client)
    for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"):
        if addr in N(prefix):
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def reference(addr, cfg: dict) -> int:
    inside = lambda nets: any(addr in n for n in nets if n.version == addr.version)  # noqa: E731
    if addr in cfg["own"]:
        return OWN
    for iface in cfg["addresses"]:
        net = iface.network
        if addr in net:
            if (
                net.version == 4
                and net.prefixlen <= 30
                and addr in (net.network_address, net.broadcast_address)
            ):
                return DROP
            return PEER if cfg["p2p"] and not inside(cfg["deny"]) else REFUSE
    if inside(REF_DROP) or addr in cfg["broadcasts"]:
        return DROP
    if inside(REF_NEVER) or inside(cfg["deny"]):
        return REFUSE
    if addr.version == 6 and addr != ipaddress.IPv6Address("::1"):
        carried = ref_carried_ipv4(addr)
        if carried is not None:
            return HOST if reference(carried, cfg) == HOST else REFUSE
    if addr in REF_METADATA:
        exact = ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
        return HOST if exact in cfg["allow"] else REFUSE
    if inside(cfg["allow"]):
        return HOST
    if addr in cfg["host"] or inside(REF_LOCAL):
        return HOST if cfg["allow_local"] else REFUSE
    if inside(REF_GLOBAL_EXCEPTIONS):
        return HOST
    return REFUSE if inside(REF_REFUSED) else HOST


SPECIAL = [N(a) for a, _ in REFUSED] + REF_DROP + REF_GLOBAL_EXCEPTIONS + [
    N("10.9.0.0/24"), N("fd00:9::/64"), N("2001::/32"), N("2002::/16"), N("64:ff9b::/96"),
    N("::ffff:0:0/96"), N("::ffff:0:0:0/96"), N("::/96"),
]  # fmt: skip


@st.composite
def interesting_addresses(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.ip_addresses())
    if kind == 1:
        net = draw(st.sampled_from(SPECIAL))
        return net.network_address + draw(st.integers(0, net.num_addresses - 1))
    if kind == 2:
        known = METADATA + HOST_ADDRESSES + PUBLIC + ["::1", "::"]
        return draw(st.sampled_from([ipaddress.ip_address(a) for a in known]))
    v4 = draw(st.one_of(st.ip_addresses(v=4), interesting_addresses().filter(
        lambda a: a.version == 4)))  # fmt: skip
    form = draw(st.sampled_from(FORMS))
    return ipaddress.ip_address(embedded_forms(str(v4))[form])


rule_networks = st.sampled_from(
    [
        N(n)
        for n in (
            "10.0.0.0/8",
            "10.1.0.0/16",
            "127.0.0.0/8",
            "169.254.169.254/32",
            "100.64.0.0/10",
            "0.0.0.0/0",
            "8.8.8.0/24",
            "::/0",
            "fd00::/8",
            "fd00:ec2::254/128",
            "2001::/32",
            "64:ff9b:1::/48",
            "10.9.0.0/25",
            "fd00:9::/64",
            "2002::/16",
        )
    ]  # fmt: skip
)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(interesting_addresses(), min_size=1, max_size=20),
    st.lists(rule_networks, max_size=3),
    st.lists(rule_networks, max_size=2),
    st.booleans(),
    st.booleans(),
)
def test_classify_matches_the_reference(addresses, allow, deny, p2p, allow_local):
    p = policy(allow=allow, deny=deny, peer_to_peer=p2p, allow_local=allow_local)
    cfg = {
        "own": {ipaddress.ip_interface(a).ip for a in ADDRESSES},
        "addresses": [ipaddress.ip_interface(a) for a in ADDRESSES],
        "broadcasts": {ipaddress.ip_address(a) for a in HOST_BROADCASTS},
        "host": {ipaddress.ip_address(a) for a in HOST_ADDRESSES + PUBLIC},
        "allow": allow,
        "deny": deny,
        "p2p": p2p,
        "allow_local": allow_local,
    }
    for addr in addresses:
        assert p.classify(addr.packed) == reference(addr, cfg), str(addr)
