"""`Exit.forget_peer`: a removed peer's (or a lost address's) flows end at once, host sockets
closed, and nothing more goes toward the tunnel for them (issue 9, item 3)."""

from __future__ import annotations

from tether.netstack.exit import EchoSend, TcpClose, UdpClose
from tether.netstack.wire import (
    PROTO_UDP,
    Reassembler,
    build_echo,
    build_ipv4,
    build_udp_packet,
    fragment_ipv4,
)

from .support import (
    NET4,
    NET6,
    OTHER_KEY,
    PEER4,
    PEER6,
    PEER_KEY,
    FakeHost,
    Harness,
    PeerTcp,
    exchange,
    open_connection,
)

PEER4_B = bytes([10, 9, 0, 3])  # a second address of the same peer


def udp(h: Harness, src=PEER4, sport=40000, peer=PEER_KEY, dst=NET4):
    h.deliver(build_udp_packet(src, dst, sport, 9000, b"ping"), peer)
    return h.actions()[0].flow


def test_removed_peer_loses_every_flow_and_nothing_reaches_the_tunnel():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45000, 80)
    tcp = open_connection(h, host, client)
    down = udp(h)
    other = udp(h, sport=41000, peer=OTHER_KEY, src=PEER4_B)
    h.deliver(build_echo(PEER4, NET4, 7, 1, b"x", reply=False))
    (echo,) = h.actions()
    assert isinstance(echo, EchoSend)
    # The servers keep sending: a UDP reply and host data are waiting when the peer goes.
    h.x.receive_udp_datagram(down, b"stream", h.now)
    h.x.receive_tcp_data(tcp, b"download" * 100, h.now)
    assert h.x.forget_peer(PEER_KEY, h.now) == 2
    acts = h.actions()
    assert TcpClose(tcp, True) in acts and UdpClose(down) in acts
    assert h.out() == []  # the queued reply and the TCP data are gone with the flows
    # Late host events and the echo reply are ignored; timers send nothing either.
    h.x.receive_udp_datagram(down, b"late", h.now)
    h.x.receive_tcp_data(tcp, b"late", h.now)
    h.x.receive_tcp_eof(tcp, h.now)
    h.x.receive_echo_reply(4, NET4, echo.seq, b"x", h.now)
    h.run_until(h.now + 20)  # within the other peer's UDP flow's idle time
    assert h.out() == [] and h.actions() == []
    assert h.x.flow_count == 1 and not other.closed  # the other peer is untouched
    assert PEER_KEY not in h.x.peer_states()
    h.x.audit()


def test_the_next_owner_of_the_address_gets_fresh_flows_only():
    h = Harness()
    udp(h)
    h.x.forget_peer(PEER_KEY, h.now)
    h.actions()
    fresh = udp(h, peer=OTHER_KEY)  # same address and port, another peer
    assert fresh.peer.key == OTHER_KEY and not fresh.closed
    h.x.receive_udp_datagram(fresh, b"yours", h.now)
    assert len(h.out()) == 1


def test_keep_ends_only_the_lost_addresses():
    h = Harness()
    host = FakeHost(h)
    lost_tcp = open_connection(h, host, PeerTcp(PEER4, NET4, 45001, 80))
    kept_tcp = open_connection(h, host, PeerTcp(PEER6, NET6, 45002, 80))
    lost = udp(h)
    kept = udp(h, src=PEER6, dst=NET6)
    h.x.receive_udp_datagram(lost, b"a", h.now)
    h.x.receive_udp_datagram(kept, b"b", h.now)
    assert h.x.forget_peer(PEER_KEY, h.now, keep=lambda src: src != PEER4) == 2
    assert lost.closed and lost_tcp.closed and not kept.closed and not kept_tcp.closed
    (pkt,) = h.out()  # only the reply toward the kept address is still sent
    assert pkt[24:40] == PEER6
    assert PEER_KEY in h.x.peer_states()
    h.x.audit()


def test_a_draining_clean_close_is_aborted():
    h = Harness()
    host = FakeHost(h)
    client = PeerTcp(PEER4, NET4, 45003, 80)
    flow = open_connection(h, host, client)
    h.x.receive_tcp_eof(flow, h.now)  # the server closes first; the exit ends in TIME-WAIT
    exchange(h, host, client, [])
    client.send(b"last words")
    client.close()
    exchange(h, host, client, client.output())
    assert flow.conn.state.name == "TIME_WAIT" and flow.reclaimable
    assert host.closed[flow] is False  # the shell may still be writing the data out
    h.x.forget_peer(PEER_KEY, h.now)
    host.run()
    assert host.closed[flow] is True


def test_fragments_being_reassembled_are_dropped():
    h = Harness()
    big = build_ipv4(PEER4, NET4, PROTO_UDP, build_udp_packet(PEER4, NET4, 1, 2, bytes(3000))[20:])
    first, *_ = fragment_ipv4(big, 600)
    h.deliver(first)
    ps = h.x.peer_states()[PEER_KEY]
    assert isinstance(ps.reassembler, Reassembler) and len(ps.reassembler)
    h.x.forget_peer(PEER_KEY, h.now)
    assert h.x.next_timer() is None  # no reassembly timeout will answer the old owner
    h.run_until(h.now + 120)
    assert h.out() == []


def test_unknown_peer_is_a_no_op():
    h = Harness()
    assert h.x.forget_peer(b"Z" * 32, h.now) == 0
