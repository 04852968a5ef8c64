"""TCP through the sans-IO exit: connect/refuse/unreachable, data both ways, flow control,
close and reset paths, limits, MSS clamping. The peer is `PeerTcp` (independent of
TcpConnection); the host is a fake that records actions."""

from __future__ import annotations

import errno

import pytest

from tether.netstack.exit import (
    ExitConfig,
    TcpClose,
    TcpShutdown,
    TcpWrite,
)
from tether.netstack.wire import (
    ACK,
    PROTO_TCP,
    RST,
    SYN,
    build_segment,
    ip_wrapper,
    ipv4_header,
    parse_icmp,
    parse_ip,
    parse_segment,
)

from .support import (
    NET4,
    NET6,
    PEER4,
    PEER6,
    FakeHost,
    Harness,
    PeerTcp,
    exchange,
    ip_packet,
    open_connection,
)


@pytest.mark.parametrize("src, dst", [(PEER4, NET4), (PEER6, NET6)])
def test_connect_then_data_both_ways_then_close(src, dst):
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(src, dst, 45000, 443)
    flow = open_connection(h, host, client)
    assert (flow.host, flow.port) == (("198.51.100.7", 443) if len(dst) == 4 else
                                     ("2001:db8::7", 443))  # fmt: skip
    up = bytes(i % 251 for i in range(200_000))
    client.send(up)
    exchange(h, host, client, client.output())
    assert host.written[flow] == up and client.all_acked
    down = bytes(i % 241 for i in range(300_000))
    pos = 0
    for _ in range(10000):
        if pos < len(down):
            n = h.x.tcp_read_budget(flow)
            if n:
                chunk = down[pos : pos + n]
                h.x.receive_tcp_data(flow, chunk, h.now)
                pos += len(chunk)
        exchange(h, host, client, [])
        if pos == len(down) and len(client.received) == len(down):
            break
        h.run_until(h.now + 0.05)
    assert bytes(client.received) == down
    # The peer closes first; the exit shuts the host socket's sending side.
    client.close()
    exchange(h, host, client, client.output())
    assert flow in host.shutdown and flow not in host.closed
    h.x.receive_tcp_eof(flow, h.now)
    exchange(h, host, client, [])
    assert client.fin_received
    assert host.closed[flow] is False  # graceful
    h.run_until(h.now + 10)  # the connection leaves TIME-WAIT/LAST-ACK
    assert h.x.flow_count == 0 and h.x.next_timer() is None


def test_refused_connect_answers_syn_with_rst():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45001, 81)
    exchange(h, host, client, [client.syn()])
    (flow,) = host.connects
    h.x.receive_tcp_connect_failed(flow, errno.ECONNREFUSED, h.now)
    exchange(h, host, client, [])
    assert client.reset and client.segments_in == 1
    assert host.closed == {flow: True}
    assert h.x.flow_count == 0


@pytest.mark.parametrize(
    "err, code", [(errno.EHOSTUNREACH, 1), (errno.ENETUNREACH, 0), (errno.ETIMEDOUT, 1),
                  (errno.EACCES, 13), (errno.EMFILE, 1)],
)  # fmt: skip
def test_failed_connect_answers_syn_with_icmp_unreachable(err, code):
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45002, 82)
    exchange(h, host, client, [client.syn()])
    (flow,) = host.connects
    h.x.receive_tcp_connect_failed(flow, err, h.now)
    host.run()
    (pkt,) = h.out()
    m = parse_icmp(parse_ip(pkt))
    assert (m.type, m.code) == (3, code)
    q = m.quoted()
    assert (q.src, q.dst) == (PEER4, NET4)
    assert parse_segment(q.src, q.dst, q.payload, verify_checksum=False).flags == SYN
    assert host.closed == {flow: True} and h.x.flow_count == 0


def test_connect_timeout_is_the_connections_and_sends_icmp():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER6, NET6, 45003, 83)
    exchange(h, host, client, [client.syn()])
    (flow,) = host.connects
    h.run_until(h.now + 29)
    host.run()
    assert h.out() == [] and not host.closed
    h.run_until(h.now + 2)
    host.run()
    (pkt,) = h.out()
    m = parse_icmp(parse_ip(pkt))
    assert (m.type, m.code) == (1, 3)  # ICMPv6 address unreachable
    assert host.closed == {flow: True}
    h.x.receive_tcp_connected(flow, h.now)  # too late: ignored
    assert h.out() == [] and h.actions() == []


def test_retransmitted_syn_while_connecting_opens_nothing_new():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45004, 84)
    syn = client.syn()
    exchange(h, host, client, [syn, syn])
    h.now += 1
    exchange(h, host, client, [syn])
    assert len(host.connects) == 1 and h.x.flow_count == 1


def test_peer_reset_while_connecting_aborts_the_connect():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45005, 85)
    exchange(h, host, client, [client.syn()])
    (flow,) = host.connects
    rst = build_segment(PEER4, NET4, 45005, 85, (client.iss + 1), 0, RST, 0)
    h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, rst))
    host.run()
    assert host.closed == {flow: True}


def test_segment_without_connection_gets_rst():
    h = Harness()
    seg = build_segment(PEER4, NET4, 45006, 86, 100, 5000, ACK, 1000, b"data")
    h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, seg))
    ip = parse_ip(h.out()[0])
    rst = parse_segment(ip.src, ip.dst, ip.payload)
    assert (ip.src, rst.flags, rst.seq) == (NET4, RST, 5000)
    h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, build_segment(PEER4, NET4, 1, 2, 3, 4, RST, 0)))
    assert h.out() == []  # never a RST for a RST


def test_mss_is_clamped_to_the_device_mtu():
    h = Harness(mtu=1280)
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45007, 87, mss=8960)
    flow = open_connection(h, host, client)
    assert client.peer_mss <= 1280 - 40
    h.x.receive_tcp_data(flow, b"x" * 100_000, h.now)
    for _ in range(200):
        out = h.out()
        assert all(len(p) <= 1280 for p in out)
        for p in out:
            for r in client.receive(p):
                h.deliver(r)
        host.run()
        if len(client.received) == 100_000:
            break
        h.run_until(h.now + 0.05)
    assert len(client.received) == 100_000


def test_host_write_backpressure_closes_the_peer_window():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45008, 88)
    flow = open_connection(h, host, client)
    client.send(b"a" * 1000)
    exchange(h, host, client, client.output())
    assert bytes(host.written[flow]) == b"a" * 1000
    h.x.receive_tcp_write_blocked(flow, h.now)  # the shell could not write everything
    client.send(b"b" * 2_000_000)
    exchange(h, host, client, client.output())
    assert bytes(host.written[flow]) == b"a" * 1000  # nothing more while blocked
    assert client.snd_wnd == 0  # the exit's buffer filled and its window closed
    held = (client.snd_una - (client.iss + 1) - 1000) & 0xFFFFFFFF
    assert 0 < held <= h.x.config.tcp.recv_buffer + (1 << 7)
    h.x.receive_tcp_writable(flow, h.now)
    for _ in range(1000):
        exchange(h, host, client, client.output())
        if len(host.written[flow]) == 2_001_000:
            break
        h.run_until(h.now + 0.3)
        exchange(h, host, client, client.retransmit())  # window probes, go-back-N
    assert bytes(host.written[flow]) == b"a" * 1000 + b"b" * 2_000_000


def test_host_reading_pauses_when_the_send_buffer_is_full_and_resumes():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45009, 89, window=0)  # the phone is not reading
    flow = open_connection(h, host, client)
    total = 0
    while (n := h.x.tcp_read_budget(flow)) > 0:
        h.x.receive_tcp_data(flow, b"z" * n, h.now)
        total += n
    host.run()
    assert flow in host.paused and total == flow.conn.buffer_sizes[1] == 64 * 1024  # granted
    assert h.x.tcp_read_budget(flow) == 0
    client.window = 0xFFFF
    for _ in range(1000):
        h.run_until(h.now + 0.5)  # persist probes reveal the open window
        exchange(h, host, client, [client.ack()])
        if flow not in host.paused:
            break
    assert flow not in host.paused
    assert h.x.tcp_read_budget(flow) >= flow.conn.buffer_sizes[1] // 4


def test_peer_reset_aborts_the_host_socket():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45010, 90)
    flow = open_connection(h, host, client)
    exchange(h, host, client, [client.rst()])
    assert host.closed == {flow: True} and h.x.flow_count == 0
    h.x.receive_tcp_data(flow, b"late", h.now)  # ignored
    assert h.out() == []


def test_host_reset_resets_the_peer():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER6, NET6, 45011, 91)
    flow = open_connection(h, host, client)
    h.x.receive_tcp_reset(flow, h.now)
    exchange(h, host, client, [])
    assert client.reset and host.closed == {flow: True}


def test_host_closes_first():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45012, 92)
    flow = open_connection(h, host, client)
    h.x.receive_tcp_data(flow, b"bye", h.now)
    h.x.receive_tcp_eof(flow, h.now)
    exchange(h, host, client, [])
    assert client.fin_received and bytes(client.received) == b"bye"
    assert flow not in host.closed  # the peer may still send
    client.send(b"last words")
    client.close()
    exchange(h, host, client, client.output())
    assert bytes(host.written[flow]) == b"last words"
    assert flow in host.shutdown and host.closed[flow] is False
    assert [type(a) for a in host.log[-3:]] == [TcpWrite, TcpShutdown, TcpClose]


def test_new_syn_during_time_wait_opens_a_new_connection():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45013, 93)
    flow = open_connection(h, host, client)
    h.x.receive_tcp_eof(flow, h.now)
    exchange(h, host, client, [])
    client.close()
    exchange(h, host, client, client.output())
    assert flow.conn.state.name in ("TIME_WAIT", "CLOSED")
    again = PeerTcp(PEER4, NET4, 45013, 93, isn=client.snd_nxt + 100_000)
    exchange(h, host, again, [again.syn()])
    assert len(host.connects) == 2 and host.connects[1] is not flow


def test_per_peer_tcp_limit_answers_rst():
    h = Harness(config=ExitConfig(max_flows_per_peer=2))
    host = FakeHost(h)
    for port in (1, 2, 3):
        syn = build_segment(PEER4, NET4, 50000 + port, 80, 9, 0, SYN, 65535)
        h.deliver(ip_packet(PEER4, NET4, PROTO_TCP, syn))
    host.run()
    assert len(host.connects) == 2
    (rst,) = h.out()
    assert parse_segment(NET4, PEER4, parse_ip(rst).payload).flags == RST | ACK


@pytest.mark.parametrize("src, dst", [(PEER4, NET4), (PEER6, NET6)])
def test_ip_wrapper_matches_the_reference_builders(src, dst):
    seg = build_segment(dst, src, 80, 1234, 1, 2, ACK, 100, b"x" * 333)
    pkt = ip_wrapper(dst, src)(seg)
    ip = parse_ip(pkt)  # IPv4 header checksum verified
    assert bytes(ip.payload) == seg and ip.dst == src and ip.protocol == PROTO_TCP
    if len(src) == 4:
        assert pkt[:20] == ipv4_header(dst, src, PROTO_TCP, len(seg), 64, 0, df=True)
