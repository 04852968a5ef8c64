"""The exit shell's side of an upstream proxy (tether/device/exit/egress.py, proxy.py) on a real
loop with real sockets: a proxy that cannot be reached fails TCP and UDP flows at once, with
ICMP, and nothing reaches the flows' destinations directly; the proxy is marked down (the
gauge), logged once (without the password), and new flows fail without trying it again; a proxy
given by name is resolved in a worker thread, never on the loop. The proxy answering (CONNECT,
UDP ASSOCIATE, its reply codes) is tested end to end against dante in
tests/e2e/test_egress_e2e.py, the SOCKS state machine in tests/netstack/test_socks.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

from tether.config.egress import parse_egress
from tether.config.exit_settings import ExitSettings
from tether.netstack.wire import build_udp_packet, parse_icmp, parse_ip

from ..netstack.support import PeerTcp
from .support import FakeDevice, run

PEER4 = bytes([10, 7, 0, 2])
LO4 = bytes([127, 0, 0, 1])
SECRET = "pw-never-shown"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def icmp_of(packet: bytes) -> tuple[int, int]:
    m = parse_icmp(parse_ip(packet))
    return m.type, m.code


def test_an_unreachable_proxy_fails_flows_fast_and_nothing_goes_direct(caplog):
    caplog.set_level(logging.INFO, "tether.exit")
    proxy_port = closed_port()
    egress = parse_egress(f"socks5://alice:{SECRET}@127.0.0.1:{proxy_port}")

    async def main():
        loop = asyncio.get_running_loop()
        # the destinations, which must see nothing
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        dport, uport = listener.getsockname()[1], udp.getsockname()[1]
        dev = FakeDevice(loop)
        shell = dev.start(allow_local=True)
        shell.set_exit(ExitSettings(egress=egress))
        try:
            client = PeerTcp(PEER4, LO4, 41000, dport)
            dev.inject(client.syn())
            (pkt,) = await dev.next_packets()
            assert icmp_of(pkt) == (3, 0)  # network unreachable: a hard error for connect()
            assert shell.egress_status() == {egress.label: False}
            dev.inject(build_udp_packet(PEER4, LO4, 40000, uport, b"hello?"))
            (pkt,) = await dev.next_packets()
            assert icmp_of(pkt)[0] == 3
            # while it is down, new flows fail without a try (at once, in the same batch)
            dev.inject(PeerTcp(PEER4, LO4, 41001, dport).syn())
            assert dev.packets and icmp_of(dev.packets.pop())[0] == 3
            await asyncio.sleep(0.2)
            for op in (listener.accept, lambda: udp.recv(100)):
                try:
                    op()
                    raise AssertionError("a flow reached its destination directly")
                except BlockingIOError:
                    pass
        finally:
            dev.close()
            listener.close()
            udp.close()

    run(main())
    down = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(down) == 1, down
    assert f"alice@127.0.0.1:{proxy_port}" in down[0] and "ECONNREFUSED" in down[0]
    assert "none leaves directly" in down[0]
    assert SECRET not in caplog.text


def test_a_proxy_named_by_host_is_resolved_off_the_loop():
    port = closed_port()
    calls = []

    def resolver(host, port_, *args, **kw):
        calls.append((host, threading.get_ident()))
        return socket.getaddrinfo("127.0.0.1", port_, *args, **kw)

    async def main():
        loop_thread = threading.get_ident()
        dev = FakeDevice(asyncio.get_running_loop())
        shell = dev.start(allow_local=True, resolver=resolver)
        shell.set_exit(ExitSettings(egress=parse_egress(f"socks5://proxy.test:{port}")))
        try:
            for _ in range(100):  # the probe made at once resolves the name, then fails
                if shell.egress_status():
                    break
                await asyncio.sleep(0.02)
            assert shell.egress_status() == {f"socks5://proxy.test:{port}": False}
            assert calls and all(h == "proxy.test" and t != loop_thread for h, t in calls)
        finally:
            dev.close()

    run(main())
