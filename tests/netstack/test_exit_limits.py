"""Fair limits of the sans-IO exit (issue 9, item 5): connection churn is never refused,
buffers are granted small and grow while they limit a transfer, budgets hold, and a peer below
its fair share takes room from the peer holding the most. The rules against a reference model
are in test_exit_limits_model.py."""

from __future__ import annotations

import pytest

from tether.netstack.exit import START_BUFFER, ExitConfig, TcpClose, UdpClose
from tether.netstack.tcp import TcpConfig
from tether.netstack.wire import RST, build_udp_packet, parse_ip, parse_segment

from .support import (
    NET4,
    OTHER_KEY,
    PEER4,
    PEER_KEY,
    FakeHost,
    Harness,
    PeerTcp,
    exchange,
    open_connection,
)

OTHER4 = bytes([10, 9, 0, 3])
FULL = 512 * 1024


def short_connection(h: Harness, host: FakeHost, port: int, server_first: bool) -> PeerTcp:
    """One HTTP/1.0-like exchange: request, response, both sides close."""
    client = PeerTcp(PEER4, NET4, port, 80)
    exchange(h, host, client, [client.syn()])
    if client.state != "ESTABLISHED":
        return client
    flow = host.connects[-1]
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    exchange(h, host, client, client.output())
    h.x.receive_tcp_data(flow, b"HTTP/1.0 200 OK\r\n\r\nhello", h.now)
    if server_first:
        h.x.receive_tcp_eof(flow, h.now)
        exchange(h, host, client, [])
        client.close()
        exchange(h, host, client, client.output())
    else:
        client.close()
        exchange(h, host, client, client.output())
        h.x.receive_tcp_eof(flow, h.now)
        exchange(h, host, client, [])
    return client


@pytest.mark.parametrize("server_first", [True, False], ids=["server-closes", "client-closes"])
def test_back_to_back_connections_are_never_refused(server_first):
    """3,000 connections at 1,000 per second: with the server closing first each one lingers
    in TIME-WAIT for 4 s, so the peer's 1,024 flows fill up after one second; from then on
    every SYN reclaims the oldest finished connection instead of being refused."""
    h = Harness()
    host = FakeHost(h, auto_connect=True)
    for i in range(3000):
        h.now += 0.001
        client = short_connection(h, host, 10000 + i, server_first)
        assert client.fin_received and not client.reset, i
        assert client.received.endswith(b"hello")
        assert h.x.flow_count <= 1024
        if i % 500 == 0:
            h.x.audit()
    stats = h.x.counters()
    assert stats["refused_flow_limit"] == 0 and stats["refused_buffer_limit"] == 0
    assert stats["tcp_flows_opened"] == 3000
    if server_first:
        assert stats["tcp_reclaimed"] > 1900
    h.run_until(h.now + 10)
    h.out()  # TIME-WAIT ended: the connections are settled at the next flush
    assert h.x.flow_count == 0 and h.x.limits.buffer == 0


def test_live_connections_at_the_peer_limit_are_refused_with_rst_but_reclaimables_are_not():
    h = Harness(config=ExitConfig(max_flows_per_peer=3))
    host = FakeHost(h, auto_connect=True)
    done = short_connection(h, host, 1000, server_first=True)
    assert done.fin_received and h.x.tcp.flows  # in TIME-WAIT, reclaimable
    live = [open_connection(h, host, PeerTcp(PEER4, NET4, 2000 + i, 80)) for i in range(2)]
    third = PeerTcp(PEER4, NET4, 3000, 80)
    exchange(h, host, third, [third.syn()])  # takes the finished connection's place
    assert third.state == "ESTABLISHED" and h.x.counters()["tcp_reclaimed"] == 1
    fourth = PeerTcp(PEER4, NET4, 4000, 80)
    exchange(h, host, fourth, [fourth.syn()])
    assert fourth.reset and h.x.counters()["refused_flow_limit"] == 1
    assert not any(f.closed for f in live)


def test_a_tcp_syn_at_the_peer_limit_recycles_the_peers_own_udp_flow():
    h = Harness(config=ExitConfig(max_flows_per_peer=2))
    host = FakeHost(h, auto_connect=True)
    h.deliver(build_udp_packet(PEER4, NET4, 5000, 53, b"q"))
    h.now += 1
    h.deliver(build_udp_packet(PEER4, NET4, 5001, 53, b"q"))
    old, new = (a.flow for a in h.actions() if hasattr(a, "flow") and type(a).__name__ == "UdpOpen")
    h.now += 1
    h.deliver(build_udp_packet(PEER4, NET4, 5000, 53, b"again"))  # the older one is used again
    h.actions()
    client = PeerTcp(PEER4, NET4, 6000, 80)
    exchange(h, host, client, [client.syn()])
    assert client.state == "ESTABLISHED"
    assert new.closed and not old.closed  # least recently used, not least recently opened


def test_peer_below_its_fair_share_takes_from_the_peer_holding_the_most():
    h = Harness(config=ExitConfig(max_flows=8, max_flows_per_peer=8))
    host = FakeHost(h, auto_connect=True)
    hog = [open_connection(h, host, PeerTcp(PEER4, NET4, 100 + i, 80)) for i in range(6)]
    for i in range(2):
        h.now += 1
        h.deliver(build_udp_packet(PEER4, NET4, 200 + i, 9, b"x"))
    h.actions()
    # The other peer opens 4 flows (its share is 8 // 2 = 4): first the hog's UDP flows go
    # (least recently used first), then its least recently active connection, reset.
    mine = []
    for i in range(4):
        h.now += 1
        h.deliver(build_udp_packet(OTHER4, NET4, 300 + i, 9, b"y"), OTHER_KEY)
        acts = h.actions()
        mine += [a for a in acts if type(a).__name__ == "UdpOpen"]
        if i < 2:
            assert [type(a) for a in acts][0] is UdpClose
        else:
            closes = [a for a in acts if type(a) is TcpClose]
            assert len(closes) == 1 and closes[0].abort and closes[0].flow in hog
    assert len(mine) == 4
    resets = [p for p in h.out() if parse_segment(NET4, PEER4, parse_ip(p).payload).flags & RST]
    assert len(resets) == 2  # the evicted connections were reset toward the hog
    # At its share, the other peer recycles its own flows instead of taking more.
    h.now += 1
    h.deliver(build_udp_packet(OTHER4, NET4, 400, 9, b"z"), OTHER_KEY)
    acts = h.actions()
    assert acts[0] == UdpClose(mine[0].flow)
    assert h.x.counters()["flows_evicted_fair_share"] == 4
    h.x.audit()


def transfer(h, host, client, flow, up: int, down: int) -> None:
    """Move `up` bytes peer → host and `down` bytes host → peer."""
    client.send(b"u" * up)
    exchange(h, host, client, client.output())
    down += len(client.received)
    sent = len(client.received)
    for _ in range(10000):
        if sent < down:
            n = min(h.x.tcp_read_budget(flow), down - sent)
            if n:
                h.x.receive_tcp_data(flow, b"d" * n, h.now)
                sent += n
        exchange(h, host, client, [])
        if sent == down and len(client.received) == down:
            return
        h.run_until(h.now + 0.01)
    raise AssertionError("transfer stalled")


def test_buffers_start_small_and_grow_to_full_size_while_they_limit_the_transfer():
    h = Harness()
    host = FakeHost(h, auto_connect=True)
    client = PeerTcp(PEER4, NET4, 45000, 80, window=0xFFFF, wscale=7)
    flow = open_connection(h, host, client)
    assert flow.conn.buffer_sizes == (START_BUFFER, START_BUFFER)
    lim = h.x.limits
    assert flow.grant == lim.cost(*lim.start_level) == h.x.limits.buffer == 3 * START_BUFFER
    transfer(h, host, client, flow, up=3_000_000, down=0)
    assert flow.conn.buffer_sizes == (FULL, START_BUFFER)  # only the receive side grew
    transfer(h, host, client, flow, up=0, down=10_000_000)
    assert flow.conn.buffer_sizes == (FULL, FULL)
    assert h.x.limits.buffer == flow.grant == 3 * FULL
    h.x.audit()


def test_idle_connections_keep_their_small_grants():
    h = Harness()
    host = FakeHost(h, auto_connect=True)
    for i in range(100):  # a browser's connections, each carrying a small request and answer
        client = PeerTcp(PEER4, NET4, 45000 + i, 443)
        flow = open_connection(h, host, client)
        transfer(h, host, client, flow, up=500, down=20_000)
    assert h.x.limits.buffer == 100 * 3 * START_BUFFER  # 19 MiB, not 100 x 1.5 MiB
    assert h.x.counters()["tcp_buffer_grown"] == 0


def test_the_peer_budget_keeps_floor_grants_for_every_flow_it_may_open():
    """A budget too small for START_BUFFER grants everywhere: later connections get the floor,
    none is refused before the flow limit, and growth stops at the budget."""
    cfg = ExitConfig(max_flows_per_peer=64, max_buffer_per_peer=8 << 20)
    h = Harness(config=cfg)
    host = FakeHost(h, auto_connect=True)
    lim = h.x.limits
    assert lim.floor * 64 <= cfg.max_buffer_per_peer // 2
    flows = [open_connection(h, host, PeerTcp(PEER4, NET4, 1000 + i, 80)) for i in range(64)]
    assert h.x.counters()["refused_buffer_limit"] == 0
    sizes = {f.conn.buffer_sizes for f in flows}
    assert (START_BUFFER, START_BUFFER) in sizes and len(sizes) == 2  # start, then floors
    assert lim.buffer <= cfg.max_buffer_per_peer
    h.x.audit()


def test_the_device_budget_is_shared_fairly():
    """One peer grows connections until the device's budget is mostly its; another peer still
    opens every connection it asks for (below its share it evicts the hog's least recently
    active ones), and the hog, above its share, cannot grow any more."""
    tcp = TcpConfig(recv_buffer=256 << 10, send_buffer=256 << 10)
    cfg = ExitConfig(
        max_buffer=4 << 20, max_buffer_per_peer=4 << 20, max_flows_per_peer=16, tcp=tcp
    )
    h = Harness(config=cfg)
    host = FakeHost(h, auto_connect=True)
    lim = h.x.limits
    hog = []
    for i in range(6):
        client = PeerTcp(PEER4, NET4, 1000 + i, 80, window=0xFFFF, wscale=7)
        flow = open_connection(h, host, client)
        transfer(h, host, client, flow, up=2_000_000, down=4_000_000)
        hog.append((flow, client))
        h.now += 1
    hog_ps = hog[0][0].peer
    assert lim.buffer == hog_ps.buffer > 3 << 20  # beyond three quarters of the device's
    assert hog_ps.buffer + lim.floor * (16 - 6) <= cfg.max_buffer_per_peer  # floors kept
    others = []
    for i in range(10):
        h.now += 1
        client = PeerTcp(OTHER4, NET4, 2000 + i, 80)
        others.append(open_connection(h, host, client, peer=OTHER_KEY))
    assert h.x.counters()["refused_buffer_limit"] == 0
    assert h.x.counters()["tcp_evicted_fair_share"] >= 1
    evicted = [f for f, _ in hog if f.closed]
    assert evicted == [f for f, _ in hog][: len(evicted)]  # least recently active first
    resets = [parse_segment(NET4, PEER4, parse_ip(p).payload) for p in host.elsewhere]
    assert sorted(s.dport for s in resets if s.flags & RST) == [f.key[2] for f in evicted]
    assert lim.buffer <= cfg.max_buffer
    before = hog_ps.buffer
    flow, client = next((f, c) for f, c in hog if not f.closed)
    transfer(h, host, client, flow, up=1_000_000, down=1_000_000)
    assert hog_ps.buffer == before  # above its share: no growth
    h.x.audit()


def test_finished_connections_release_their_buffers():
    h = Harness()
    host = FakeHost(h, auto_connect=True)
    short_connection(h, host, 1000, server_first=True)
    (flow,) = h.x.tcp.flows.values()
    assert flow.reclaimable and flow.conn.state.name == "TIME_WAIT"
    assert flow.grant == 0 and h.x.limits.buffer == 0


def test_udp_eviction_follows_activity_not_opening_order():
    h = Harness(config=ExitConfig(max_flows_per_peer=50))
    flows = []
    for i in range(50):
        h.now += 1
        h.deliver(build_udp_packet(PEER4, NET4, 1000 + i, 9, b"x"))
        flows.append(h.actions()[0].flow)
    for i in range(0, 50, 2):  # every even flow is used again, in order
        h.now += 1
        h.deliver(build_udp_packet(PEER4, NET4, 1000 + i, 9, b"x"))
    h.x.receive_udp_datagram(flows[1], b"reply", h.now)  # a reply counts as use too
    h.actions()
    evicted = []
    for i in range(27):
        h.now += 1
        h.deliver(build_udp_packet(PEER4, NET4, 2000 + i, 9, b"x"))
        evicted += [a.flow for a in h.actions() if type(a) is UdpClose]
    odd = [flows[i] for i in range(3, 50, 2)]
    assert evicted[:24] == odd  # never-reused flows first, oldest first
    assert evicted[24:] == [flows[0], flows[2], flows[4]]


def test_resets_for_syns_over_the_limit_share_the_peers_error_budget():
    """A peer hammering its limit gets RSTs within its ICMP error budget (burst 50, then 100/s);
    the other SYNs are dropped, so its stack retries later instead of costing an RST each."""
    h = Harness(config=ExitConfig(max_flows_per_peer=1))
    host = FakeHost(h, auto_connect=True)
    open_connection(h, host, PeerTcp(PEER4, NET4, 999, 80))
    for i in range(200):
        h.deliver(PeerTcp(PEER4, NET4, 1000 + i, 80).syn())
    resets = h.out()
    assert len(resets) == 50 and h.x.counters()["refused_silently"] == 150
    assert h.x.counters()["refused_flow_limit"] == 200
    h.now += 0.1  # the budget refills: 10 more after 100 ms
    for i in range(20):
        h.deliver(PeerTcp(PEER4, NET4, 2000 + i, 80).syn())
    assert len(h.out()) == 10


def test_bookkeeping_stays_bounded_under_flow_churn():
    """Flows that come and go (DNS queries, short connections) leave no trail in the heaps."""
    h = Harness()
    host = FakeHost(h, auto_connect=True)
    for i in range(3000):
        h.now += 0.01
        h.deliver(build_udp_packet(PEER4, NET4, 1000 + i % 30000, 53, b"q"))
        if i % 10 == 0:
            short_connection(h, host, 40000 + i, server_first=False)
        h.run_until(h.now)
    h.actions()
    ps = h.x.peer_states()[PEER_KEY]
    lim = h.x.limits
    assert len(ps.udp_lru) <= 2 * len(ps.udp_flows) + 17
    assert len(ps.tcp_lru) <= 2 * ps.live_tcp + 17
    assert len(lim.by_flows) <= 2 * len(lim.holders) + 65
    assert h.x.counters()["timer_entries"] <= 4 * h.x.flow_count + 1025


def test_limits_change_live_raised_at_once_lowered_as_flows_end():
    """An edited `[Exit]` section reaches a running exit (`Exit.set_limits`): a raised limit
    admits at once; a lowered one cuts nothing that is open, but the next new flow beyond it
    waits for room, exactly as at any limit, and the audit accepts the holdings above it."""
    h = Harness(config=ExitConfig(max_flows_per_peer=2))
    host = FakeHost(h, auto_connect=True)
    live = [open_connection(h, host, PeerTcp(PEER4, NET4, 2000 + i, 80)) for i in range(2)]
    refused = PeerTcp(PEER4, NET4, 3000, 80)
    exchange(h, host, refused, [refused.syn()])
    assert refused.reset

    h.x.set_limits(max_flows_per_peer=4)
    more = [open_connection(h, host, PeerTcp(PEER4, NET4, 4000 + i, 80)) for i in range(2)]
    assert not any(f.closed for f in more) and len(h.x.tcp.flows) == 4
    h.x.audit()

    h.x.set_limits(max_flows_per_peer=1)  # four live connections stay open
    h.x.audit()
    assert not any(f.closed for f in live) and h.x.limits.per_peer == 1
    late = PeerTcp(PEER4, NET4, 5000, 80)
    exchange(h, host, late, [late.syn()])
    assert late.reset  # every one of the peer's flows is a live connection: refused

    with pytest.raises(ValueError):
        h.x.set_limits(max_flows=0)
    assert h.x.config.max_flows >= 1
