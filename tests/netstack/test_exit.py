"""The sans-IO exit: policy, peer-to-peer routing, the device's own addresses, ICMP, UDP flows,
reassembly and timers. No sockets: actions are inspected and host events are fed by hand."""

from __future__ import annotations

import errno

import pytest

from tether.netstack.exit import EchoSend, ExitConfig, TcpConnect, UdpClose, UdpOpen, UdpSend
from tether.netstack.wire import (
    ACK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    RST,
    SYN,
    Reassembler,
    build_echo,
    build_ipv4,
    build_ipv6,
    build_segment,
    build_udp_packet,
    fragment_ipv4,
    fragment_ipv6,
    parse_icmp,
    parse_ip,
    parse_segment,
    parse_udp,
)

from .support import (
    NET4,
    NET6,
    OTHER_KEY,
    OWN4,
    OWN6,
    PEER4,
    PEER6,
    PEER_KEY,
    Harness,
    ip_packet,
)


def icmp_of(packet: bytes):
    ip = parse_ip(packet)
    return ip, parse_icmp(ip)  # checksums verified


def a4(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


# -- refusals (the policy's table is in test_exit_policy.py) --------------------------------


def test_refused_tcp_gets_rst_and_udp_gets_admin_prohibited():
    h = Harness()
    syn = build_segment(PEER4, a4("127.0.0.1"), 4000, 22, 77, 0, SYN, 65535)
    h.deliver(ip_packet(PEER4, a4("127.0.0.1"), PROTO_TCP, syn))
    h.deliver(build_udp_packet(PEER4, a4("169.254.169.254"), 4001, 80, b"GET"))
    h.deliver(build_udp_packet(PEER6, bytes(15) + b"\x01", 4002, 53, b"q"))
    assert h.actions() == []
    icmp4, icmp6, rst = h.out()  # what the exit builds one at a time leaves ahead of TCP's
    ip = parse_ip(rst)
    seg = parse_segment(ip.src, ip.dst, ip.payload)
    assert (ip.src, ip.dst, seg.flags, seg.ack) == (a4("127.0.0.1"), PEER4, RST | ACK, 78)
    _, m4 = icmp_of(icmp4)
    assert (m4.type, m4.code) == (3, 13)
    assert m4.quoted().dst == a4("169.254.169.254")
    ip6, m6 = icmp_of(icmp6)
    assert (m6.type, m6.code, ip6.dst) == (1, 1, PEER6)


@pytest.mark.parametrize(
    "dst",
    [
        a4("192.168.1.10"),  # the host's LAN
        a4("10.9.0.3"),  # another peer, peer to peer being off
        bytes.fromhex("0064ff9b00000000000000000a000001"),  # NAT64 form of 10.0.0.1
        bytes.fromhex("fd000009000000000000000000000003"),  # another peer, IPv6
    ],
)
def test_lan_peers_and_embedded_forms_are_refused_fast(dst):
    h = Harness(peer_to_peer=False)
    src = PEER4 if len(dst) == 4 else PEER6
    syn = build_segment(src, dst, 4000, 443, 77, 0, SYN, 65535)
    h.deliver(ip_packet(src, dst, PROTO_TCP, syn))
    h.deliver(build_udp_packet(src, dst, 4001, 53, b"q"))
    h.deliver(build_echo(src, dst, 7, 1, b"ping", reply=False))
    assert h.actions() == []
    icmp_udp, icmp_echo, rst = h.out()
    ip = parse_ip(rst)
    seg = parse_segment(ip.src, ip.dst, ip.payload)
    assert (ip.src, ip.dst, seg.flags, seg.ack) == (dst, src, RST | ACK, 78)
    for pkt in (icmp_udp, icmp_echo):
        ip, m = icmp_of(pkt)
        assert (m.type, m.code) == ((3, 13) if len(dst) == 4 else (1, 1))
        assert ip.src == dst and ip.dst == src and m.quoted().dst == dst
    assert h.x.refusals() == {PEER_KEY: 3}


def test_refusals_are_counted_per_peer_and_go_with_the_peer_state():
    h = Harness(peer_to_peer=False)
    assert h.x.refusals() == {}
    for _ in range(3):
        h.deliver(build_udp_packet(PEER4, a4("10.1.2.3"), 4000, 53, b"q"))
    h.deliver(build_udp_packet(PEER4, a4("10.1.2.3"), 4000, 53, b"q"), peer=OTHER_KEY)
    h.deliver(build_udp_packet(PEER4, NET4, 4000, 53, b"q"), peer=b"R" * 32)  # allowed
    assert h.x.refusals() == {PEER_KEY: 3, OTHER_KEY: 1}
    h.x.set_rules(allow=["10.0.0.0/8"])  # live: the next packet goes out
    h.deliver(build_udp_packet(PEER4, a4("10.1.2.3"), 4000, 53, b"q"))
    assert isinstance(h.actions()[0], UdpOpen)
    assert h.x.refusals() == {PEER_KEY: 3, OTHER_KEY: 1}


def test_allow_local_sends_loopback_to_the_host():
    h = Harness(allow_local=True)
    h.deliver(build_udp_packet(PEER4, a4("127.0.0.1"), 4000, 9999, b"hi"))
    open_, send = h.actions()
    assert isinstance(open_, UdpOpen) and open_.flow.host == "127.0.0.1"
    assert bytes(send.payload) == b"hi"


def test_multicast_is_dropped_silently():
    h = Harness()
    h.deliver(build_udp_packet(PEER4, a4("224.0.0.251"), 5353, 5353, b"mdns"))
    h.deliver(build_udp_packet(PEER6, bytes.fromhex("ff0200000000000000000000000000fb"), 5353,
                               5353, b"mdns"))  # fmt: skip
    assert h.actions() == [] and h.out() == []
    assert h.x.counters()["drop_not_unicast"] == 2


# -- peer to peer --------------------------------------------------------------------------------


def test_peer_to_peer_is_routed_back_with_ttl_decremented():
    h = Harness()
    other = a4("10.9.0.3")
    pkt = build_udp_packet(PEER4, other, 1000, 2000, b"hello peer", ttl=9)
    h.deliver(pkt)
    assert h.actions() == []
    (fwd,) = h.out()
    ip = parse_ip(fwd)  # header checksum verified by the parser
    assert ip.ttl == 8 and ip.dst == other
    assert bytes(parse_udp(ip).payload) == b"hello peer"
    pkt6 = build_ipv6(PEER6, PEER6[:15] + b"\x09", PROTO_UDP, b"\x00" * 8, hop_limit=2)
    h.deliver(pkt6)
    (fwd6,) = h.out()
    assert parse_ip(fwd6).ttl == 1


def test_peer_to_peer_ttl_exhausted_gets_time_exceeded_from_own_address():
    h = Harness()
    h.deliver(build_udp_packet(PEER4, a4("10.9.0.3"), 1000, 2000, b"x", ttl=1))
    (err,) = h.out()
    ip, m = icmp_of(err)
    assert (ip.src, ip.dst, m.type, m.code) == (OWN4, PEER4, 11, 0)


def test_peer_to_peer_fragments_pass_untouched_but_for_ttl():
    h = Harness()
    big = build_udp_packet(PEER4, a4("10.9.0.3"), 1, 2, b"z" * 3000, ident=7)
    frags = fragment_ipv4(big, 1400)
    for f in frags:
        h.deliver(f)
    out = h.out()
    assert len(out) == len(frags)
    assert all(parse_ip(o).is_fragment for o in out)


# -- the device's own addresses ----------------------------------------------------------------


@pytest.mark.parametrize("src, own", [(PEER4, OWN4), (PEER6, OWN6)])
def test_own_address_answers_ping(src, own):
    h = Harness()
    h.deliver(build_echo(src, own, 0x1234, 7, b"abc", reply=False))
    (reply,) = h.out()
    ip, m = icmp_of(reply)
    assert (ip.src, ip.dst, m.ident, m.seq, bytes(m.body)) == (own, src, 0x1234, 7, b"abc")
    assert m.type in (0, 129)
    assert h.actions() == []


def test_own_address_large_fragmented_ping_is_reassembled_and_reply_fragmented():
    h = Harness(mtu=1280)
    req = build_echo(PEER4, OWN4, 1, 1, bytes(range(256)) * 16, reply=False)
    req = build_ipv4(PEER4, OWN4, PROTO_ICMP, parse_ip(req).payload, ident=99)
    for f in fragment_ipv4(req, 1000):
        h.deliver(f)
    out = h.out()
    assert len(out) > 1 and all(len(p) <= 1280 for p in out)
    r = Reassembler()
    whole = None
    for p in out:
        whole = r.push(parse_ip(p), h.now) or whole
    assert bytes(parse_icmp(whole).body) == bytes(range(256)) * 16


def test_own_address_answers_nothing_else():
    h = Harness()
    syn = build_segment(PEER4, OWN4, 4000, 80, 5, 0, SYN, 65535)
    h.deliver(ip_packet(PEER4, OWN4, PROTO_TCP, syn))
    h.deliver(build_udp_packet(PEER4, OWN4, 4000, 53, b"q"))
    h.deliver(build_ipv4(PEER4, OWN4, 47, b"gre"))
    h.deliver(build_echo(PEER4, OWN4, 1, 1, b"", reply=True))  # a reply: ignored
    port_unreach, proto_unreach, rst = h.out()
    assert parse_segment(OWN4, PEER4, parse_ip(rst).payload).flags & RST
    assert icmp_of(port_unreach)[1].code == 3
    assert icmp_of(proto_unreach)[1].code == 2
    assert h.actions() == []


# -- ICMP toward the host --------------------------------------------------------------------


@pytest.mark.parametrize("src, dst, v", [(PEER4, NET4, 4), (PEER6, NET6, 6)])
def test_echo_is_proxied_and_only_real_replies_return(src, dst, v):
    h = Harness()
    h.deliver(build_echo(src, dst, 0xBEEF, 42, b"payload", reply=False))
    assert h.out() == []  # nothing faked
    (send,) = h.actions()
    assert isinstance(send, EchoSend) and send.version == v and bytes(send.payload) == b"payload"
    h.x.receive_echo_reply(v, dst, (send.seq + 1) & 0xFFFF, b"payload", h.now)  # not ours
    h.x.receive_echo_reply(v, NET4 if v == 6 else NET6, send.seq, b"payload", h.now)  # wrong host
    assert h.out() == []
    h.x.receive_echo_reply(v, dst, send.seq, b"payload", h.now)
    (reply,) = h.out()
    ip, m = icmp_of(reply)
    assert (ip.src, ip.dst, m.ident, m.seq, bytes(m.body)) == (dst, src, 0xBEEF, 42, b"payload")
    h.x.receive_echo_reply(v, dst, send.seq, b"payload", h.now)  # a duplicate is not forwarded
    assert h.out() == []


def test_echo_sequence_numbers_are_unique_per_destination_and_expire():
    h = Harness()
    for peer_key, src in ((b"A" * 32, PEER4), (b"B" * 32, a4("10.9.0.3"))):
        h.deliver(build_echo(src, NET4, 1, 1, b"", reply=False), peer=peer_key)
    s1, s2 = h.actions()
    assert s1.seq != s2.seq
    assert h.x.next_timer() == pytest.approx(h.now + 10.0)
    h.run_until(h.now + 11)
    h.x.receive_echo_reply(4, NET4, s1.seq, b"", h.now)
    assert h.out() == [] and h.x.next_timer() is None


def test_echo_per_peer_limit():
    h = Harness(config=ExitConfig(max_echo_per_peer=3))
    for i in range(5):
        h.deliver(build_echo(PEER4, NET4, 1, i, b"", reply=False))
    assert len(h.actions()) == 3


def test_icmp_other_than_echo_toward_host_is_dropped():
    h = Harness()
    h.deliver(build_echo(PEER4, NET4, 1, 1, b"", reply=True))
    err = build_ipv4(PEER4, NET4, PROTO_ICMP, bytes([3, 3, 0xFC, 0xFC, 0, 0, 0, 0]))
    h.deliver(err)
    ns = build_ipv6(PEER6, NET6, PROTO_ICMPV6, bytes([135, 0, 0, 0]) + bytes(20))
    h.deliver(ns)
    assert h.out() == [] and h.actions() == []


def test_unsupported_protocol_gets_protocol_unreachable_rate_limited():
    h = Harness(config=ExitConfig(icmp_error_burst=3, icmp_error_rate=1.0))
    for _ in range(10):
        h.deliver(build_ipv4(PEER4, NET4, 132, b"sctp"))  # SCTP
    out = h.out()
    assert len(out) == 3
    _, m = icmp_of(out[0])
    assert (m.type, m.code) == (3, 2)
    h.now += 1.0
    h.deliver(build_ipv4(PEER4, NET4, 132, b"sctp"))
    assert len(h.out()) == 1
    h.deliver(build_ipv6(PEER6, NET6, 132, b"sctp"), peer=OTHER_KEY)  # another peer's bucket
    ip6, m6 = icmp_of(h.out()[0])
    assert (m6.type, m6.code, m6.pointer) == (4, 1, 6)
    h.deliver(build_ipv6(PEER6, NET6, 59, b""), peer=OTHER_KEY)  # no next header: silence
    assert h.out() == []


# -- UDP -------------------------------------------------------------------------------------


def udp_flow(h, src=PEER4, dst=NET4, sport=40000, dport=9000, payload=b"ping", peer=None):
    h.deliver(build_udp_packet(src, dst, sport, dport, payload), **({"peer": peer} if peer else {}))
    acts = h.actions()
    return acts


@pytest.mark.parametrize("src, dst", [(PEER4, NET4), (PEER6, NET6)])
def test_udp_flow_round_trip(src, dst):
    h = Harness()
    open_, send = udp_flow(h, src, dst)
    flow = open_.flow
    assert isinstance(open_, UdpOpen) and isinstance(send, UdpSend) and send.flow is flow
    assert (flow.port, flow.version) == (9000, 4 if len(dst) == 4 else 6)
    assert bytes(send.payload) == b"ping"
    h.deliver(build_udp_packet(src, dst, 40000, 9000, b"again"))
    (send2,) = h.actions()  # same flow: no second open
    assert send2.flow is flow
    h.x.receive_udp_datagram(flow, memoryview(b"pong"), h.now)
    (reply,) = h.out()
    ip = parse_ip(reply)
    d = parse_udp(ip)  # checksum verified
    assert (ip.src, ip.dst, d.src_port, d.dst_port, bytes(d.payload)) == (
        dst, src, 9000, 40000, b"pong",
    )  # fmt: skip


@pytest.mark.parametrize("src, dst", [(PEER4, NET4), (PEER6, NET6)])
def test_udp_reply_larger_than_mtu_is_fragmented(src, dst):
    h = Harness(mtu=1280)
    (open_, _) = udp_flow(h, src, dst)
    payload = bytes(range(256)) * 20
    h.x.receive_udp_datagram(open_.flow, payload, h.now)
    out = h.out()
    assert len(out) > 1 and all(len(p) <= 1280 for p in out)
    r = Reassembler()
    whole = None
    for p in out:
        whole = r.push(parse_ip(p), h.now) or whole
    assert bytes(parse_udp(whole).payload) == payload


def test_udp_fragmented_request_is_reassembled():
    h = Harness()
    pkt = build_udp_packet(PEER6, NET6, 1, 2, b"q" * 3000)
    for f in fragment_ipv6(pkt, 1280, 5):
        h.deliver(f)
    _, send = h.actions()
    assert bytes(send.payload) == b"q" * 3000


def test_udp_reassembly_timeout_sends_time_exceeded():
    h = Harness()
    pkt = build_udp_packet(PEER4, NET4, 1, 2, b"q" * 3000, ident=5)
    h.deliver(fragment_ipv4(pkt, 1000)[0])
    assert h.actions() == []
    h.run_until(h.now + 31)
    (err,) = h.out()
    _, m = icmp_of(err)
    assert (m.type, m.code) == (11, 1)


def test_udp_idle_expiry_unreplied_replied_dns():
    h = Harness()
    (o1, _) = udp_flow(h, dport=9000)
    (o2, _) = udp_flow(h, dport=53, sport=40001)
    (o3, _) = udp_flow(h, dport=9001, sport=40002)
    h.x.receive_udp_datagram(o3.flow, b"r", h.now)
    h.out()
    t0 = h.now
    h.run_until(t0 + 9.9)
    assert h.actions() == []
    h.run_until(t0 + 10.1)
    assert h.actions() == [UdpClose(o2.flow)]
    h.run_until(t0 + 29.9)
    assert h.actions() == []
    h.run_until(t0 + 30.1)
    assert h.actions() == [UdpClose(o1.flow)]
    # Activity pushes the expiry back.
    h.deliver(build_udp_packet(PEER4, NET4, 40002, 9001, b"x"))
    h.actions()
    h.run_until(t0 + 125)
    assert h.actions() == []
    h.run_until(t0 + 30.1 + 120.1)
    assert h.actions() == [UdpClose(o3.flow)]
    assert h.x.flow_count == 0 and h.x.next_timer() is None


def test_the_exit_awaits_datagrams_while_a_udp_flow_is_open_or_a_ping_is_out():
    h = Harness()
    assert not h.x.awaits_datagrams()
    h.deliver(build_echo(PEER4, NET4, 1, 1, b"p", reply=False))
    (send,) = h.actions()
    assert h.x.awaits_datagrams()
    h.x.receive_echo_reply(4, NET4, send.seq, b"p", h.now)
    h.out()
    assert not h.x.awaits_datagrams()  # answered
    h.deliver(build_echo(PEER4, NET4, 1, 2, b"p", reply=False))
    h.actions()
    h.run_until(h.now + 10.1)
    assert not h.x.awaits_datagrams()  # forgotten unanswered
    (o, _) = udp_flow(h, dport=9000)
    assert h.x.awaits_datagrams()
    h.run_until(h.now + 30.1)
    assert h.actions() == [UdpClose(o.flow)] and not h.x.awaits_datagrams()


def test_udp_per_peer_limit_evicts_least_recently_used():
    h = Harness(config=ExitConfig(max_flows_per_peer=3))
    flows = [udp_flow(h, sport=1000 + i)[0].flow for i in range(3)]
    h.now += 1
    h.deliver(build_udp_packet(PEER4, NET4, 1000, 9000, b"keep me"))
    h.actions()
    udp_flow(h, sport=2000)
    acts = h.x.take_actions()
    assert acts == []
    # The eviction happened in the previous call's actions: flow 1001 (oldest use) went.
    assert flows[1].closed and not flows[0].closed and not flows[2].closed
    other = udp_flow(h, sport=3000, peer=OTHER_KEY)
    assert isinstance(other[0], UdpOpen)  # limits are per peer


def test_udp_eviction_action_order():
    h = Harness(config=ExitConfig(max_flows_per_peer=1))
    (o1, _) = udp_flow(h, sport=1)
    acts = udp_flow(h, sport=2)
    assert [type(a) for a in acts] == [UdpClose, UdpOpen, UdpSend]
    assert acts[0].flow is o1.flow


def test_udp_at_the_global_limit_a_peer_at_its_share_recycles_its_own():
    h = Harness(config=ExitConfig(max_flows=2))
    (mine, _) = udp_flow(h, sport=1)
    (other, _) = udp_flow(h, sport=2, peer=OTHER_KEY)
    acts = udp_flow(h, sport=3)
    assert [type(a) for a in acts] == [UdpClose, UdpOpen, UdpSend]
    assert acts[0].flow is mine.flow and not other.flow.closed


def test_udp_global_limit_refuses_when_the_peer_holds_only_live_tcp():
    h = Harness(config=ExitConfig(max_flows=2))
    for port in (1, 2):
        syn = build_segment(PEER4, NET4, 5000 + port, 80, 1, 0, SYN, 65535)
        h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, syn))
    h.actions()
    assert udp_flow(h, sport=3) == []
    (err,) = h.out()
    assert icmp_of(err)[1].code == 13
    assert h.x.counters()["refused_flow_limit"] == 1


@pytest.mark.parametrize(
    "err, icmp", [(errno.ECONNREFUSED, (3, 3)), (errno.EHOSTUNREACH, (3, 1)),
                  (errno.ENETUNREACH, (3, 0)), (errno.EACCES, (3, 13))],
)  # fmt: skip
def test_udp_host_errors_become_icmp(err, icmp):
    h = Harness()
    (o, _) = udp_flow(h)
    h.x.receive_udp_error(o.flow, err, h.now)
    (pkt,) = h.out()
    ip, m = icmp_of(pkt)
    q = m.quoted()
    d = parse_udp(q, verify=False)
    assert (m.type, m.code) == icmp
    assert (ip.src, ip.dst, q.src, q.dst, d.src_port, d.dst_port) == (
        NET4, PEER4, PEER4, NET4, 40000, 9000,
    )  # fmt: skip
    assert not o.flow.closed  # the socket stays; later datagrams may get through


def test_udp_emsgsize_becomes_fragmentation_needed_with_mtu():
    h = Harness()
    (o, _) = udp_flow(h)
    h.x.receive_udp_error(o.flow, errno.EMSGSIZE, h.now, mtu=1400)
    _, m = icmp_of(h.out()[0])
    assert (m.type, m.code, m.mtu) == (3, 4, 1400)
    h.x.receive_udp_error(o.flow, errno.EMSGSIZE, h.now)  # no MTU known: nothing useful to say
    assert h.out() == []


def test_udp_open_failed_forgets_flow_and_next_datagram_retries():
    h = Harness()
    (o, _) = udp_flow(h, src=PEER6, dst=NET6)
    h.x.receive_udp_open_failed(o.flow, errno.ENETUNREACH, h.now)
    assert h.actions() == [UdpClose(o.flow)]
    _, m = icmp_of(h.out()[0])
    assert (m.type, m.code) == (1, 0)
    acts = udp_flow(h, src=PEER6, dst=NET6)
    assert isinstance(acts[0], UdpOpen) and acts[0].flow is not o.flow


def test_udp_port_zero_and_bad_source_are_dropped():
    h = Harness()
    h.deliver(build_udp_packet(PEER4, NET4, 0, 9, b"x"))
    h.deliver(build_udp_packet(PEER4, NET4, 9, 0, b"x"))
    h.deliver(build_udp_packet(a4("127.0.0.1"), NET4, 9, 9, b"x"))
    assert h.actions() == [] and h.out() == []


def test_events_for_closed_flows_are_ignored():
    h = Harness(config=ExitConfig(max_flows_per_peer=1))
    (o, _) = udp_flow(h, sport=1)
    udp_flow(h, sport=2)
    h.x.receive_udp_datagram(o.flow, b"late", h.now)
    h.x.receive_udp_error(o.flow, errno.ECONNREFUSED, h.now)
    assert h.out() == []


def test_close_releases_everything():
    h = Harness()
    (o, _) = udp_flow(h)
    syn = build_segment(PEER4, NET4, 5000, 80, 1, 0, SYN, 65535)
    h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, syn))
    (c,) = h.actions()
    assert isinstance(c, TcpConnect)
    h.x.close()
    acts = h.actions()
    assert {type(a).__name__ for a in acts} == {"UdpClose", "TcpClose"}
    assert h.x.flow_count == 0


def test_tcp_mismatched_ack_to_refused_gets_plain_rst():
    h = Harness()
    seg = build_segment(PEER4, a4("127.0.0.1"), 4000, 22, 5, 999, ACK, 100)
    h.deliver(ip_packet(PEER4, a4("127.0.0.1"), PROTO_TCP, seg))
    ip = parse_ip(h.out()[0])
    rst = parse_segment(ip.src, ip.dst, ip.payload)
    assert (rst.flags, rst.seq) == (RST, 999)


# -- what the exit reports (read-only views) -------------------------------------------------


def test_counters_are_a_copy_with_flow_gauges():
    h = Harness()
    udp_flow(h)
    c = h.x.counters()
    assert (c["udp_flows"], c["tcp_flows"], c["udp_flows_opened"]) == (1, 0, 1)
    assert c["timer_entries"] == 1  # the flow's idle timer
    assert c["never_counted"] == 0
    c["udp_flows_opened"] = 99
    assert h.x.counters()["udp_flows_opened"] == 1  # the caller's copy changed nothing


def test_peer_states_is_a_read_only_view():
    h = Harness()
    assert PEER_KEY not in h.x.peer_states()
    udp_flow(h)
    view = h.x.peer_states()
    assert list(view) == [PEER_KEY] and view[PEER_KEY].flows == 1
    with pytest.raises(TypeError):
        view[OTHER_KEY] = view[PEER_KEY]  # type: ignore[index]


def test_what_only_the_shell_sees_is_counted_by_the_exit():
    """A datagram dropped on a full host socket buffer, and echo requests the shell could not
    send, reach the exit as host events and show in its counters; the peer is told nothing."""
    h = Harness()
    (o, _) = udp_flow(h)
    h.x.receive_udp_error(o.flow, errno.EAGAIN, h.now)
    h.x.receive_udp_error(o.flow, errno.EINTR, h.now)
    h.deliver(build_echo(PEER4, NET4, 1, 1, b"x", reply=False))
    (send,) = h.actions()
    h.x.receive_echo_failed(send.version, None, h.now)  # no ping socket
    h.x.receive_echo_failed(send.version, errno.EPERM, h.now)  # the send failed
    c = h.x.counters()
    assert c["drop_udp_host_buffer_full"] == 2 and c["udp_host_error_unmapped"] == 0
    assert (c["echo_unavailable"], c["echo_send_failed"], c["icmp_errors"]) == (1, 1, 0)
    assert h.out() == []
