"""The exit shell's side of an upstream proxy (tether/device/exit/egress.py, proxy.py) on a real
loop with real sockets: a proxy that cannot be reached fails TCP and UDP flows at once, with
ICMP, and nothing reaches the flows' destinations directly; the proxy is marked down (the
gauge), logged once (without the password), and new flows fail without trying it again; a proxy
given by name is resolved in a worker thread, never on the loop. Through Debian's danted on
loopback: TCP CONNECT carrying data, the proxy's refusals reaching the peer as a direct failure
would (RST, ICMP administratively prohibited), UDP ASSOCIATE per flow, associations ending with
their flows' idle expiry, and flows ending with their association. User names, the proxy in
its own namespace and the fail-closed counters are in tests/e2e/test_egress_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tether.config.egress import parse_egress
from tether.config.exit_settings import ExitSettings
from tether.device.exit import egress as exit_egress
from tether.device.exit import proxy as exit_proxy
from tether.netstack.exit import ExitConfig
from tether.netstack.wire import build_udp_packet, parse_icmp, parse_ip, parse_udp

from ..netstack.support import PeerTcp
from .support import FakeDevice, drive, echo_handler, run, skip_or_fail

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


# -- through a real proxy: Debian's danted on loopback, with its own config ---------------------

DANTED = "/usr/sbin/danted"
DANTED_CONF = """\
logoutput: stderr
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks block {{ from: 0.0.0.0/0 to: 127.0.0.1/32 port = {blocked} }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate udpreply
    log: connect disconnect error }}
"""


class Danted:
    """danted as a process of the test on a loopback port (no authentication: the e2e tests do
    user names; here the shell's handling of what the proxy does is the point)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.blocked = closed_port(), closed_port()
        conf = tmp / "danted.conf"
        conf.write_text(DANTED_CONF.format(port=self.port, blocked=self.blocked))
        self.log = tmp / "danted.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [DANTED, "-f", str(conf), "-p", str(tmp / "danted.pid")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while " running" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    @property
    def egress(self):
        return parse_egress(f"socks5://127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def danted(tmp_path):
    if os.geteuid() != 0 or not Path(DANTED).exists():
        skip_or_fail("needs root and Debian's dante-server (/usr/sbin/danted)")
    proxy = Danted(tmp_path)
    try:
        yield proxy
    finally:
        proxy.stop()


async def proxied_shell(egress, **kw):
    dev = FakeDevice(asyncio.get_running_loop())
    shell = dev.start(allow_local=True, **kw)
    shell.set_exit(ExitSettings(egress=egress))
    return dev, shell


def test_tcp_through_the_proxy_and_its_refusals_as_a_direct_failure_would_be(danted):
    data = os.urandom(200_000)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dev, shell = await proxied_shell(danted.egress)
        try:
            client = PeerTcp(PEER4, LO4, 41000, port)
            dev.inject(client.syn())
            await drive(dev, client, lambda: client.state == "ESTABLISHED")
            client.send(data)
            dev.inject(*client.output())
            await drive(dev, client, lambda: len(client.received) >= len(data))
            assert bytes(client.received) == data and not client.reset
            assert shell.egress_status() == {danted.egress.label: True}
            # the proxy's "connection refused": the SYN is reset, as a direct refusal is
            refused = PeerTcp(PEER4, LO4, 41001, closed_port())
            dev.inject(refused.syn())
            await drive(dev, refused, lambda: refused.reset, timeout=10)
            assert refused.state != "ESTABLISHED"
            # "not allowed by ruleset": ICMP administratively prohibited
            dev.inject(PeerTcp(PEER4, LO4, 41002, danted.blocked).syn())
            (pkt,) = await dev.next_packets()
            assert icmp_of(pkt) == (3, 13)
            # the destination's refusals say nothing against the proxy
            assert shell.egress_status() == {danted.egress.label: True}
        finally:
            dev.close()
            server.close()
            await server.wait_closed()

    run(main())
    assert "udpassociate" not in danted.log.read_text()


def udp_echo_server() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def udp_round_trip(dev, server, sport: int, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    dev.inject(build_udp_packet(PEER4, LO4, sport, server.getsockname()[1], payload))
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(server, 2048), 5)
    await loop.sock_sendto(server, data.upper(), addr)
    (pkt,) = await dev.next_packets()
    return bytes(parse_udp(parse_ip(pkt)).payload)


def test_udp_association_per_flow_idle_expiry_and_the_proxy_ending_it(danted):
    async def main():
        server = udp_echo_server()
        config = ExitConfig(udp_idle=1.0, udp_idle_unreplied=1.0)
        dev, shell = await proxied_shell(danted.egress, config=config)
        try:
            assert await udp_round_trip(dev, server, 40000, b"one") == b"ONE"
            assert await udp_round_trip(dev, server, 40001, b"two") == b"TWO"
            assert shell.counters()["udp_flows"] == 2
            # idle flows expire like direct ones, and their associations end with them
            for _ in range(100):
                if shell.counters()["udp_flows"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert shell.counters()["udp_flows"] == 0
            await asyncio.sleep(0.3)
            assert danted.log.read_text().count("udpassociate ]") == 2, danted.log.read_text()
            # the proxy ending the association (its control connection closing) ends the flow
            assert await udp_round_trip(dev, server, 40002, b"three") == b"THREE"
            danted.stop()
            for _ in range(100):
                if shell.counters()["udp_flows"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert shell.counters()["udp_flows"] == 0
        finally:
            dev.close()
            server.close()

    run(main())


def test_a_silent_proxy_fails_the_flow_at_its_deadline(monkeypatch, caplog):
    """A proxy that takes the connection and says nothing: the flow fails when the negotiation's
    deadline passes (as a connect timeout would), and the proxy is down."""
    monkeypatch.setattr(exit_egress, "NEGOTIATION_TIMEOUT", 0.5)
    monkeypatch.setattr(exit_proxy, "PROBE_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO, "tether.exit")
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers

    async def main():
        egress = parse_egress(f"socks5://127.0.0.1:{silent.getsockname()[1]}")
        dev, shell = await proxied_shell(egress)
        try:
            start = time.monotonic()
            dev.inject(PeerTcp(PEER4, LO4, 41000, closed_port()).syn())
            (pkt,) = await dev.next_packets(timeout=5)
            assert icmp_of(pkt) == (3, 0) and 0.4 < time.monotonic() - start < 3
            assert shell.egress_status() == {egress.label: False}
        finally:
            dev.close()

    try:
        run(main())
    finally:
        silent.close()
    assert "did not answer in time" in caplog.text
