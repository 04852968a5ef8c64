"""ExitShell on the host's loopback, with a fake device in place of WireGuard.

The fake device does what `Device` does around its `Inside`: makes it from an `InsideContext`,
hands it packets, collects `take_packets()` right after and whenever the shell calls `wake()`,
and arms one timer at `next_timer()`. Test code plays the
phone with packets built by our own builders; the phone's TCP is `PeerTcp` (independent of the
exit's TcpConnection, sharing only the wire-format functions). Servers run on 127.0.0.1/::1 in
this process, so `allow_local=True`. All traffic stays on loopback (or, for the ping-socket test,
inside a network namespace the test creates), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tether.device.exit import ExitShell, discover_host_addresses
from tether.netstack.wire import (
    PROTO_TCP,
    RST,
    SYN,
    Reassembler,
    build_echo,
    build_segment,
    build_udp_packet,
    parse_icmp,
    parse_ip,
    parse_segment,
    parse_udp,
)

from ..netstack.support import PeerTcp, ip_packet
from .support import PEER_KEY, FakeDevice, drive, echo_handler, run, skip_or_fail

PEER4 = bytes([10, 7, 0, 2])
PEER6 = bytes.fromhex("fd000007000000000000000000000002")
LO4 = bytes([127, 0, 0, 1])
LO6 = bytes(15) + b"\x01"
ROOT = Path(__file__).resolve().parents[2]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- UDP ---------------------------------------------------------------------------------------


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.transport.sendto(data.upper(), addr)


def test_actions_run_where_input_arrives_and_replies_come_through_wake():
    """The host socket is opened and written inside `receive_packets` (before anyone takes
    packets); the server's answer reaches the device through `wake()`."""

    async def main():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        dev = FakeDevice(loop)
        shell = dev.start(allow_local=True)
        try:
            packet = build_udp_packet(PEER4, LO4, 40002, port, b"now")
            shell.receive_packets([(PEER_KEY, packet)], time.monotonic())
            assert len(shell._live) == 1 and dev.wakes == 0
            (reply,) = await dev.next_packets()
            assert bytes(parse_udp(parse_ip(reply)).payload) == b"NOW"
            assert dev.wakes >= 1
        finally:
            dev.close()
            transport.close()

    run(main())


@pytest.mark.parametrize("v6", [False, True])
def test_udp_round_trip_including_fragmented_reply(v6):
    if v6 and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    src, lo = (PEER6, LO6) if v6 else (PEER4, LO4)

    async def main():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            UdpEcho, local_addr=("::1" if v6 else "127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        dev = FakeDevice(loop)
        dev.start(allow_local=True)
        try:
            for payload in (b"hello", b"x" * 3000):
                dev.inject(build_udp_packet(src, lo, 40000, port, payload))
                r = Reassembler()
                whole = None
                while whole is None:
                    for p in await dev.next_packets():
                        assert len(p) <= 1420
                        whole = r.push(parse_ip(p), 0.0) or whole
                d = parse_udp(whole)
                assert (whole.src, whole.dst, d.src_port, d.dst_port) == (lo, src, port, 40000)
                assert bytes(d.payload) == payload.upper()
            assert len(dev.inside._live) == 1  # one flow, one socket, both datagrams
        finally:
            dev.close()
            transport.close()

    run(main())


def test_udp_to_closed_port_gets_port_unreachable():
    async def main():
        dev = FakeDevice(asyncio.get_running_loop())
        dev.start(allow_local=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            dev.inject(build_udp_packet(PEER4, LO4, 40001, port, b"anyone?"))
            (pkt,) = await dev.next_packets()
            m = parse_icmp(parse_ip(pkt))
            assert (m.type, m.code) == (3, 3)
            assert parse_udp(m.quoted(), verify=False).dst_port == port
        finally:
            dev.close()

    run(main())


# -- TCP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
def test_tcp_echo_a_few_hundred_kilobytes_both_ways(v6):
    if v6 and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    src, lo = (PEER6, LO6) if v6 else (PEER4, LO4)
    data = os.urandom(400_000)

    async def main():
        server = await asyncio.start_server(echo_handler, "::1" if v6 else "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dev = FakeDevice(asyncio.get_running_loop())
        shell = dev.start(allow_local=True)
        client = PeerTcp(src, lo, 41000, port)
        try:
            t0 = time.monotonic()
            dev.inject(client.syn())
            await drive(dev, client, lambda: client.state == "ESTABLISHED")
            client.send(data)
            dev.inject(*client.output())
            await drive(dev, client, lambda: len(client.received) >= len(data))
            elapsed = time.monotonic() - t0
            assert bytes(client.received) == data
            client.close()
            dev.inject(*client.output())
            await drive(dev, client, lambda: client.fin_received and client.all_acked)
            assert not client.reset
            print(f"\nTCP echo {len(data) * 2 / 1e6:.1f} MB through the exit in {elapsed:.2f}s")
            # Both directions finished: the host socket is closed, the flow ends after TIME-WAIT.
            for _ in range(100):
                if not shell._live:
                    break
                await asyncio.sleep(0.02)
            assert not shell._live
        finally:
            dev.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_tcp_refused_port_answers_rst_fast():
    async def main():
        dev = FakeDevice(asyncio.get_running_loop())
        dev.start(allow_local=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, never listening: connect is refused
            client = PeerTcp(PEER4, LO4, 41001, port)
            t0 = time.monotonic()
            dev.inject(client.syn())
            (pkt,) = await dev.next_packets(timeout=2.0)
            assert time.monotonic() - t0 < 1.0
        ip = parse_ip(pkt)
        seg = parse_segment(ip.src, ip.dst, ip.payload)
        assert seg.flags & RST and seg.ack == (client.iss + 1) & 0xFFFFFFFF
        assert not dev.inside._live
        dev.close()

    run(main())


def test_loopback_is_refused_without_allow_local():
    async def main():
        dev = FakeDevice(asyncio.get_running_loop())
        shell = dev.start()  # allow_local=False: the default
        syn = build_segment(PEER4, LO4, 41002, 22, 1, 0, SYN, 65535)
        dev.inject(ip_packet(PEER4, LO4, PROTO_TCP, syn))
        dev.inject(build_udp_packet(PEER4, LO4, 41003, 53, b"q"))
        rst, icmp = await dev.next_packets()
        assert parse_segment(LO4, PEER4, parse_ip(rst).payload).flags & RST
        assert parse_icmp(parse_ip(icmp)).code == 13
        assert not shell._live  # no socket was opened
        dev.close()

    run(main())


def test_host_addresses_are_discovered_without_sending_packets():
    local, _ = discover_host_addresses()
    if not os.path.exists("/proc/net/fib_trie"):
        pytest.skip("no /proc/net/fib_trie (not Linux)")
    assert LO4 in local


def test_device_own_address_answers_ping():
    async def main():
        dev = FakeDevice(asyncio.get_running_loop())
        dev.start()
        dev.inject(build_echo(PEER4, bytes([10, 7, 0, 1]), 5, 6, b"me?", reply=False))
        (pkt,) = await dev.next_packets()
        m = parse_icmp(parse_ip(pkt))
        assert (m.type, m.ident, m.seq, bytes(m.body)) == (0, 5, 6, b"me?")
        dev.close()

    run(main())


# -- ICMP echo ---------------------------------------------------------------------------------


def ping_possible() -> str | None:
    """None if this process can ping (ping socket or raw socket), else why not."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
            return None
        except OSError as e:
            reason = str(e)
    return f"no ping socket and no raw socket ({reason})"


async def ping_through_shell(v6: bool = False) -> dict[int, bool]:
    """Ping loopback through the shell; returns {IP version: the ping socket is raw}."""
    dev = FakeDevice(asyncio.get_running_loop())
    dev.start(allow_local=True)
    src, lo = (PEER6, LO6) if v6 else (PEER4, LO4)
    try:
        dev.inject(build_echo(src, lo, 0x4242, 9, b"real reply please", reply=False))
        (pkt,) = await dev.next_packets(timeout=5.0)
        ip = parse_ip(pkt)
        m = parse_icmp(ip)
        assert (ip.src, ip.dst) == (lo, src)
        assert (m.type, m.ident, m.seq, bytes(m.body)) == (
            0 if not v6 else 129, 0x4242, 9, b"real reply please",
        )  # fmt: skip
        return {v: p.raw for v, p in dev.inside._pingers.items() if p is not None}
    finally:
        dev.close()


def test_ping_loopback_through_the_host():
    reason = ping_possible()
    if reason:
        skip_or_fail(reason)
    assert run(ping_through_shell())
    if has_ipv6_loopback():
        assert run(ping_through_shell(v6=True))


NETNS_PING = textwrap.dedent(
    """
    import asyncio, socket, subprocess, sys
    sys.path.insert(0, {root!r})
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")
    import tests.device.test_exit_shell as t
    raw = asyncio.run(asyncio.wait_for(t.ping_through_shell(), 20))
    assert raw == {{4: False}}, f"expected the unprivileged ping socket, got {{raw}}"
    print("ok")
    """
)


def test_ping_socket_in_a_private_network_namespace():
    """The unprivileged path (SOCK_DGRAM/IPPROTO_ICMP), in a network namespace of our own where
    ping_group_range can be opened without touching the host's setting."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or not unshare or not ip:
        skip_or_fail("needs root, unshare(1) and ip(8) to make a private network namespace")
    script = NETNS_PING.format(root=str(ROOT))
    r = subprocess.run(
        [unshare, "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_close_releases_every_socket():
    async def main():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        tport = server.sockets[0].getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        dev = FakeDevice(loop)
        shell = dev.start(allow_local=True)
        for i in range(5):
            dev.inject(build_udp_packet(PEER4, LO4, 42000 + i, port, b"x"))
            client = PeerTcp(PEER4, LO4, 43000 + i, tport)
            dev.inject(client.syn())
        await asyncio.sleep(0.2)
        assert len(shell._live) == 10
        dev.close()
        transport.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        assert len(os.listdir("/proc/self/fd")) <= before

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    run(main())


def test_selectable_on_a_real_device_via_inside_factory():
    """The exact wiring the daemon uses: `Device(..., exit_settings=config.exit,
    inside_factory=partial(ExitShell, ...))`, and the live changes the reconciler makes."""
    import functools

    from tether.config.exit_settings import ExitSettings
    from tether.device.change import DeviceChange
    from tether.device.device import Device
    from tether.netstack.exit import HOST, PEER, REFUSE, ExitConfig

    net = ipaddress.ip_network
    settings = ExitSettings(peer_to_peer=True, max_flows=100, max_buffer_per_peer=1 << 20)

    async def main():
        device = Device(
            "exittest0",
            private_key=bytes(range(32)),
            mtu=1380,
            addresses=[ipaddress.ip_interface("10.8.0.1/24")],
            inside_factory=functools.partial(
                ExitShell, allow_local=True, public_addresses=("198.51.100.77",)
            ),
            bind_host4="127.0.0.1",
            bind_host6="::1",
            exit_settings=settings,
        )
        device.start(asyncio.get_running_loop(), 0)
        try:
            shell = device.inside
            classify = shell.exit.policy.classify
            assert isinstance(shell, ExitShell)
            assert shell.exit.mtu == 1380 and shell.exit.policy.allow_local
            assert shell.exit.config.max_flows == 100
            assert shell.exit.config.max_buffer_per_peer == 1 << 20
            assert shell.exit.limits.per_peer == 100  # the default 1024, within MaxFlows
            assert classify(bytes([10, 8, 0, 5])) == PEER
            assert classify(bytes([198, 51, 100, 77])) == HOST  # public, but allow_local
            assert device.snapshot().exit == settings
            device.apply(DeviceChange(addresses=(ipaddress.ip_interface("10.6.0.1/24"),), mtu=1300))
            assert shell.exit.mtu == 1300
            assert classify(bytes([10, 8, 0, 5])) == REFUSE  # a LAN address now
            assert classify(bytes([10, 6, 0, 5])) == PEER
            device.apply(
                DeviceChange(
                    exit=ExitSettings(
                        allow_destinations=(net("10.8.0.0/16"),), max_flows_per_peer=7
                    )
                )
            )
            assert classify(bytes([10, 8, 0, 5])) == HOST
            assert classify(bytes([10, 6, 0, 5])) == REFUSE  # peer to peer is off again
            limits = shell.exit.limits  # limits apply live too; the others are back to defaults
            defaults = ExitConfig()
            assert (limits.per_peer, limits.per_peer_buffer) == (7, defaults.max_buffer_per_peer)
            assert 100 < limits.max_flows <= defaults.max_flows  # the fd limit may cap it
            assert device.snapshot().exit.allow_destinations == (net("10.8.0.0/16"),)
        finally:
            device.close()
        assert shell.closed

    run(main())
