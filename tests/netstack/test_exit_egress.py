"""The exit's side of an upstream proxy (`Exit.set_egress`): which flows carry which egress,
the policy judging first, ping refused, a proxy's SOCKS answer reaching the peer as a direct
failure would, and the end of a UDP association. No sockets: the shell's part is in
tests/device/test_exit_egress_shell.py, the real thing in tests/e2e/test_egress_e2e.py."""

from __future__ import annotations

import pytest

from tether.netstack.exit import TcpClose, TcpConnect, UdpClose, UdpOpen, UdpSend
from tether.netstack.exit.socks import CONNECT, SocksClient
from tether.netstack.wire import (
    ACK,
    PROTO_TCP,
    RST,
    SYN,
    build_echo,
    build_segment,
    build_udp_packet,
    parse_icmp,
    parse_ip,
    parse_segment,
)

from .support import NET4, NET6, OTHER_KEY, PEER4, PEER6, PEER_KEY, Harness, ip_packet

PROXY, OTHER_PROXY = object(), object()  # the shell's descriptors: opaque to the exit
OTHER4 = bytes([10, 9, 0, 3])


def syn(src=PEER4, dst=NET4, sport=40001, dport=443) -> bytes:
    return ip_packet(
        src, dst, PROTO_TCP, build_segment(src, dst, sport, dport, 1000, 0, SYN, 65535, mss=1360)
    )


def opened(h: Harness, packet: bytes, peer=PEER_KEY):
    h.deliver(packet, peer)
    return [a for a in h.actions() if isinstance(a, TcpConnect | UdpOpen)]


def test_flows_carry_the_egress_of_their_peer_when_they_open():
    h = Harness()
    (direct,) = opened(h, syn(sport=1))
    assert direct.flow.egress is None
    h.x.set_egress(PROXY, {OTHER_KEY: None})
    (proxied,) = opened(h, syn(sport=2))
    (udp,) = opened(h, build_udp_packet(PEER4, NET4, 5000, 53, b"q"))
    (other,) = opened(h, syn(OTHER4, sport=3), peer=OTHER_KEY)  # its override: direct
    assert (proxied.flow.egress, udp.flow.egress, other.flow.egress) == (PROXY, PROXY, None)
    assert h.x.egress_for(PEER_KEY) is PROXY and h.x.egress_for(OTHER_KEY) is None
    h.x.set_egress(None, {PEER_KEY: OTHER_PROXY})
    (later,) = opened(h, syn(sport=4))
    assert later.flow.egress is OTHER_PROXY
    h.x.forget_peer(PEER_KEY, h.now)  # a new state for the peer picks the egress up afresh
    (again,) = opened(h, syn(sport=5))
    assert again.flow.egress is OTHER_PROXY


def test_a_peer_whose_egress_changes_loses_the_flows_it_has_open():
    """Put behind a proxy, a peer must not keep leaving from the host's own address through
    a flow it keeps busy: its connections are reset both ways, its UDP flows end; other peers'
    flows, and peers whose egress stays, are left alone."""
    h = Harness()
    (tcp,) = opened(h, syn(sport=1))
    h.x.receive_tcp_connected(tcp.flow, h.now)
    h.out()
    (udp,) = opened(h, build_udp_packet(PEER4, NET4, 5000, 53, b"q"))
    (other,) = opened(h, syn(OTHER4, sport=3), peer=OTHER_KEY)
    h.actions()
    h.x.set_egress(None, {OTHER_KEY: None}, h.now)  # nobody's egress changes
    assert h.actions() == [] and h.x.counters()["flows_egress_changed"] == 0
    h.x.set_egress(PROXY, {OTHER_KEY: None}, h.now)  # the peer goes behind the proxy
    acts = h.actions()
    assert {(type(a), a.flow) for a in acts} == {(TcpClose, tcp.flow), (UdpClose, udp.flow)}
    assert other.flow not in {a.flow for a in acts}
    (rst,) = [p for p in h.out() if parse_ip(p).protocol == PROTO_TCP]
    assert parse_segment(*_tcp(rst)).flags & RST  # the app hears it at once
    assert h.x.counters()["flows_egress_changed"] == 2
    (again,) = opened(h, build_udp_packet(PEER4, NET4, 5000, 53, b"q2"))
    assert again.flow.egress is PROXY  # the next datagram opens a flow the new way
    h.x.set_egress(PROXY, {OTHER_KEY: None}, h.now)  # the same proxy again: nothing ends
    assert h.actions() == []


def test_the_policy_judges_before_anything_reaches_the_proxy():
    h = Harness()
    h.x.set_egress(PROXY)
    for dst in (bytes([10, 1, 2, 3]), bytes([169, 254, 169, 254]), bytes([127, 0, 0, 1])):
        h.deliver(syn(dst=dst))
        h.deliver(build_udp_packet(PEER4, dst, 5000, 53, b"q"))
        assert h.actions() == []  # no flow, nothing for the shell to send anywhere
        icmp, rst = h.out()
        assert parse_segment(*_tcp(rst)).flags & RST
        assert parse_icmp(parse_ip(icmp)).code == 13  # administratively prohibited
    assert h.x.refusals()[PEER_KEY] == 6


def _tcp(packet: bytes):
    ip = parse_ip(packet)
    return ip.src, ip.dst, ip.payload


@pytest.mark.parametrize("src, dst, code", [(PEER4, NET4, 13), (PEER6, NET6, 1)])
def test_ping_cannot_cross_a_proxy_and_is_told_so_at_once(src, dst, code):
    h = Harness()
    h.x.set_egress(PROXY, {OTHER_KEY: None})
    h.deliver(build_echo(src, dst, 7, 1, b"ping", reply=False))
    assert h.actions() == []  # no echo request leaves from the host's own address
    (err,) = h.out()
    ip = parse_ip(err)
    m = parse_icmp(ip)
    assert (ip.src, ip.dst, m.code) == (dst, src, code)
    assert h.x.counters()["refused_echo_egress"] == 1
    # the device's own address still answers, and a direct peer still pings for real
    h.deliver(
        build_echo(
            src,
            bytes([10, 9, 0, 1])
            if len(src) == 4
            else bytes.fromhex("fd000009000000000000000000000001"),
            7,
            2,
            b"own",
            reply=False,
        )
    )
    assert len(h.out()) == 1
    h.deliver(build_echo(OTHER4, NET4, 7, 3, b"p", reply=False), OTHER_KEY)
    assert len(h.actions()) == 1


SOCKS_REPLIES = {  # what the proxy answered → what the peer's SYN gets
    "refused": (b"\x05\x05", "rst", None),
    "not allowed": (b"\x05\x02", "icmp", 13),
    "network unreachable": (b"\x05\x03", "icmp", 0),
    "host unreachable": (b"\x05\x04", "icmp", 1),
}


@pytest.mark.parametrize("name", sorted(SOCKS_REPLIES))
def test_a_socks_answer_reaches_the_peer_as_a_direct_failure_would(name):
    h = Harness()
    h.x.set_egress(PROXY)
    (connect,) = opened(h, syn())
    client = SocksClient(CONNECT, connect.flow.host, connect.flow.port, None, h.now)
    code, kind, icmp_code = SOCKS_REPLIES[name]
    client.receive_data(b"\x05\x00" + code + b"\x00\x01" + bytes(6), h.now)
    assert not client.result.proxy_fault
    h.x.receive_tcp_connect_failed(connect.flow, client.result.err, h.now)
    (answer,) = h.out()
    if kind == "rst":
        assert parse_segment(*_tcp(answer)).flags & (RST | ACK) == RST | ACK
    else:
        assert parse_icmp(parse_ip(answer)).code == icmp_code
    assert any(isinstance(a, TcpClose) for a in h.actions())


def test_a_proxy_that_is_down_fails_the_flow_as_network_unreachable():
    h = Harness()
    h.x.set_egress(PROXY)
    (connect,) = opened(h, syn())
    client = SocksClient(CONNECT, connect.flow.host, connect.flow.port, (b"u", b"p"), h.now)
    client.receive_data(b"\x05\x02\x01\x01", h.now)  # wrong password
    assert client.result.proxy_fault
    h.x.receive_tcp_connect_failed(connect.flow, client.result.err, h.now)
    (answer,) = h.out()
    assert parse_icmp(parse_ip(answer)).code == 0  # net unreachable: no way out


def test_the_end_of_a_udp_association_forgets_the_flow():
    h = Harness()
    h.x.set_egress(PROXY)
    h.deliver(build_udp_packet(PEER4, NET4, 5000, 7007, b"one"))
    open_, send = h.actions()
    assert isinstance(open_, UdpOpen) and isinstance(send, UdpSend)
    h.x.receive_udp_closed(open_.flow, h.now)
    (close,) = h.actions()
    assert isinstance(close, UdpClose) and close.flow is open_.flow and open_.flow.closed
    assert h.out() == [] and h.x.counters()["udp_flows"] == 0
    h.x.receive_udp_closed(open_.flow, h.now)  # twice: nothing more
    assert h.actions() == []
    h.deliver(build_udp_packet(PEER4, NET4, 5000, 7007, b"two"))
    reopened, _ = h.actions()
    assert isinstance(reopened, UdpOpen) and reopened.flow is not open_.flow
    assert h.x.counters()["udp_flows_ended_by_host"] == 1
    h.x.audit()
