"""Answers to small packets leave before the next batch from the tunnel (exit/datagrams.py).

The exit's ping sockets and UDP flow sockets sit in an epoll set of their own, which the device
drains (`Inside.poll`) before each read of its tunnel socket: an echo reply or a game's UDP
answer that came in while a batch of an upload was being handled is sent before the next
batch, not after it (the loop would otherwise serve the always-readable tunnel socket first)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import select
import socket
import subprocess
import sys
import time

from tether import keys
from tether.device.device import Device
from tether.device.exit import ExitShell
from tether.device.exit.datagrams import DatagramSockets
from tether.netstack.wire import build_udp_packet, parse_ip, parse_udp
from tether.wireguard.core import WireGuardCore

from .support import PEER_KEY, FakeDevice, QuietInside, loopback, run, set_peer
from .test_device_collect import (
    CLIENT_IP,
    DEVICE_IP,
    WALL,
    Reflector,
    exchange,
    ip4,
    reflecting_device,
)

PEER4 = bytes([10, 7, 0, 2])
LO4 = bytes([127, 0, 0, 1])


@contextlib.asynccontextmanager
async def exit_and_udp_server():
    """An exit shell on a FakeDevice and a UDP server on loopback for its flows to reach:
    yields (device, shell, server socket, server port)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    dev = FakeDevice(asyncio.get_running_loop())
    shell = dev.start(allow_local=True)
    try:
        yield dev, shell, server, server.getsockname()[1]
    finally:
        dev.close()
        server.close()


def wait_readable(sock: socket.socket, timeout: float = 5.0) -> None:
    assert select.select([sock], [], [], timeout)[0], "nothing arrived"


def test_only_ready_sockets_are_served_and_a_socket_removed_meanwhile_is_not():
    loop = asyncio.new_event_loop()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    served: list[int] = []
    try:
        watched = DatagramSockets(loop, lambda: None)
        assert watched.run_ready() == 0  # nothing watched: not even a system call

        def readable(i: int) -> None:
            pairs[i][0].recv(100)
            served.append(i)
            if i == 0:
                watched.remove(pairs[2][0].fileno())  # e.g. a flow closed by what 0 read

        for i, (a, _b) in enumerate(pairs):
            watched.add(a.fileno(), readable, i)
        assert watched.run_ready() == 0 and served == []
        pairs[1][1].send(b"x")
        assert watched.run_ready() == 1 and served == [1]
        assert watched.run_ready() == 0  # read: no longer ready

        pairs[0][1].send(b"x")
        pairs[2][1].send(b"x")
        watched.run_ready()
        assert 2 not in served and 0 in served  # 2 may have been ready, but it was removed
        watched.remove(12345)  # never watched: harmless
        watched.close()
        assert watched.run_ready() == 0
        watched.add(pairs[1][0].fileno(), readable, 1)  # after close: ignored, not the loop's
        assert loop.remove_reader(pairs[1][0].fileno()) is False  # it was never the loop's
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        loop.close()


def test_poll_reads_a_udp_answer_without_waking_the_device():
    """The device asks; the shell reads what is ready and does not also schedule a wake-up."""

    async def main():
        async with exit_and_udp_server() as (dev, shell, server, port):
            assert shell.poll() is False
            shell.receive_packets(
                [(PEER_KEY, build_udp_packet(PEER4, LO4, 40010, port, b"hi"))], time.monotonic()
            )
            assert shell.take_packets() == []
            wait_readable(server)
            data, source = server.recvfrom(100)
            server.sendto(data.upper(), source)
            (flow,) = shell._live
            wait_readable(flow.handle)  # the answer waits in the flow's socket
            wakes = dev.wakes
            assert shell.poll() is True
            assert dev.wakes == wakes  # the caller collects itself
            (reply,) = shell.take_packets()
            assert bytes(parse_udp(parse_ip(reply)).payload) == b"HI"
            assert shell.poll() is False

            # Left alone, the loop still notices the socket when the tunnel is quiet.
            server.sendto(b"again", source)
            (reply,) = await dev.next_packets()
            assert bytes(parse_udp(parse_ip(reply)).payload) == b"again"
            assert dev.wakes > wakes

    run(main())


class PollingInside(QuietInside):
    """An inside whose host sockets hold `waiting` answers, found by the next `poll`; records
    the order in which the device polls, takes and hands over packets."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.events: list[str] = []
        self.waiting: list[bytes] = []
        self.out: list[bytes] = []

    def poll(self):
        self.events.append("poll")
        if self.waiting:
            self.out, self.waiting = self.waiting, []
            return True
        return False

    def receive_packets(self, packets, now, queue_delay=None):
        self.events.append(f"receive {len(packets)}")

    def take_packets(self):
        out, self.out = self.out, []
        if out:
            self.events.append(f"take {len(out)}")
        return out


def test_the_device_sends_what_poll_found_before_it_reads_the_next_batch():
    async def main():
        loop = asyncio.get_running_loop()
        async with reflecting_device(PollingInside) as (device, client, client_sock, device_addr):
            inside = device.inside

            async def pump(until) -> list:
                """Carry datagrams both ways until `until(got)`; the client's packets."""
                got = []
                deadline = time.monotonic() + 10
                while not until(got):
                    for datagram, _ in client.take_datagrams():
                        client_sock.sendto(datagram, device_addr)
                    left = deadline - time.monotonic()
                    assert left > 0, "the device did not answer"
                    try:
                        data, source = await asyncio.wait_for(
                            loop.sock_recvfrom(client_sock, 65535), min(left, 0.05)
                        )
                    except TimeoutError:
                        continue
                    client.receive_datagram(data, source[:2], time.monotonic(), WALL)
                    got += client.take_packets()
                return got

            # A session first: the handshake, then one packet the inside takes silently.
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"one"), time.monotonic(), WALL)
            await pump(lambda got: "receive 1" in inside.events)
            # Now an answer waits in the inside's host sockets when the next packet comes.
            inside.waiting = [ip4(DEVICE_IP, CLIENT_IP, b"answer")]
            inside.events.clear()
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"two"), time.monotonic(), WALL)
            answers = await pump(lambda got: got)
            assert answers == [(device.public_key, ip4(DEVICE_IP, CLIENT_IP, b"answer"))]
            # Found by the poll that opened the read, taken and sent before the packet that
            # read brought was handed over.
            assert inside.events[:3] == ["poll", "take 1", "receive 1"], inside.events

    run(main())


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(10)
flows = set()
while len(flows) < int(sys.argv[1]):
    flows.add(s.recvfrom(100)[1])
s.setblocking(False)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for flow in flows:
        try:
            s.sendto(b"x" * 1000, flow)
        except BlockingIOError:
            pass
"""


def test_a_host_side_flood_on_one_peers_udp_flows_does_not_starve_another_peers_traffic():
    """Abuse: peer A opens UDP flows to a server of its own that answers with a flood (3 s,
    as fast as a process can send). The drain before each batch serves at most POLL_SOCKETS
    sockets of a bounded batch each, so the tunnel is still read: peer B's UDP exchanges with
    another server all come back, promptly."""

    async def main():
        loop = asyncio.get_running_loop()
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, "8", "3"], stdout=subprocess.PIPE, text=True
        )
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("127.0.0.1", 0))
        echo.setblocking(False)
        loop.add_reader(echo.fileno(), lambda: echo.sendto(*echo.recvfrom(100)))
        host = loopback()
        device = Device(
            "tflood",
            private_key=keys.generate_private(),
            addresses=[ipaddress.ip_interface("10.0.0.1/24")],
            inside_factory=functools.partial(ExitShell, allow_local=True),
            bind_host4="127.0.0.1",
            bind_host6="::1",
        )
        device.start(loop, 0)
        device_addr = (host, device.listen_port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        peers = []
        for last in (2, 3):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            core = WireGuardCore(keys.generate_private())
            core.add_or_update_peer(
                device.public_key, now=0.0, endpoint=device_addr, allowed_ips=["0.0.0.0/0"]
            )
            set_peer(
                device, core.public_key, allowed_ips=[ipaddress.ip_network(f"10.0.0.{last}/32")]
            )
            peers.append((core, sock, bytes([10, 0, 0, last])))
        (a, a_sock, a_ip), (b, b_sock, b_ip) = peers
        echo_port = echo.getsockname()[1]
        answered: list[float] = []
        sent = 0

        def b_readable() -> None:
            data, source = b_sock.recvfrom(65535)
            b.receive_datagram(data, source[:2], time.monotonic(), WALL)
            for _key, packet in b.take_packets():
                sent = float(bytes(parse_udp(parse_ip(packet)).payload))
                answered.append(time.monotonic() - sent)

        loop.add_reader(b_sock.fileno(), b_readable)
        try:
            flood_port = int(await loop.run_in_executor(None, flood.stdout.readline))
            now = time.monotonic()
            for k in range(8):  # A's 8 flows; the flood begins when all 8 have reached it
                a.send_packet(build_udp_packet(a_ip, LO4, 41000 + k, flood_port, b"go"), now, WALL)
            deadline = time.monotonic() + 10
            while flood.poll() is None and time.monotonic() < deadline:
                # A's handshake and flows (A never reads the flood: its socket overflows)
                for datagram, _ in a.take_datagrams():
                    a_sock.sendto(datagram, device_addr)
                try:
                    data, source = a_sock.recvfrom(65535)
                    a.receive_datagram(data, source[:2], time.monotonic(), WALL)
                    a.take_packets()
                except BlockingIOError:
                    pass
                # B: one exchange every 50 ms, timestamped in its payload
                now = time.monotonic()
                payload = repr(now).encode()
                b.send_packet(build_udp_packet(b_ip, LO4, 42000, echo_port, payload), now, WALL)
                sent += 1
                for datagram, _ in b.take_datagrams():
                    b_sock.sendto(datagram, device_addr)
                await asyncio.sleep(0.05)
            assert flood.wait(10) == 0
            await asyncio.sleep(0.5)
            flooded = device.snapshot().peers[a.public_key].tx_bytes
            assert flooded > 5_000_000, f"the flood reached A with only {flooded} bytes"
            # B's first exchanges may be lost to its handshake; after that, every one comes back
            assert sent >= 20 and len(answered) >= sent - 3, f"{len(answered)} of {sent} came back"
            late = sorted(answered)[int(0.9 * len(answered))]
            assert late < 0.5, f"B's p90 round trip {late * 1e3:.0f} ms during the flood"
        finally:
            flood.kill()
            flood.wait()
            loop.remove_reader(b_sock.fileno())
            loop.remove_reader(echo.fileno())
            device.close()
            for _, sock, _ in peers:
                sock.close()
            echo.close()

    run(main())


def test_a_callback_that_raises_is_logged_and_the_others_are_still_served(caplog):
    """A bug in one flow's handling must not reach the device, which would then never read its
    tunnel socket (the socket the callback failed to drain stays readable); as with the loop's
    add_reader, it is logged and the socket stays watched."""
    loop = asyncio.new_event_loop()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    calls: list[int] = []
    try:
        watched = DatagramSockets(loop, lambda: None)

        def broken(i: int) -> None:
            calls.append(i)
            raise RuntimeError("bug")

        def readable(i: int) -> None:
            pairs[i][0].recv(100)
            calls.append(i)

        watched.add(pairs[0][0].fileno(), broken, 0)
        watched.add(pairs[1][0].fileno(), readable, 1)
        for _a, b in pairs:
            b.send(b"x")
        with caplog.at_level("ERROR"):
            assert watched.run_ready() == 2
        assert sorted(calls) == [0, 1]
        assert "bug" in caplog.text
        pairs[1][1].send(b"x")
        assert watched.run_ready() == 2 and calls.count(0) == 2  # still watched, still ready
        watched.close()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        loop.close()


class BrokenDatagramInside(Reflector):
    """A Reflector whose one datagram socket is readable and whose callback always raises."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.watched = DatagramSockets(asyncio.get_running_loop(), lambda: None)
        self.watched.add(self.pair[0].fileno(), self._broken)
        self.pair[1].send(b"x")

    def _broken(self) -> None:
        raise RuntimeError("a bug in one flow's handling")

    def poll(self):
        return self.watched.run_ready() > 0

    def close(self):
        self.watched.close()
        for s in self.pair:
            s.close()


def test_a_datagram_callback_that_raises_does_not_keep_the_device_from_its_tunnel():
    async def main():
        async with reflecting_device(BrokenDatagramInside) as (device, client, sock, addr):
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"ping"), time.monotonic(), WALL)
            answers = await asyncio.wait_for(exchange(client, sock, addr), 5)
            assert answers == [(device.public_key, ip4(DEVICE_IP, CLIENT_IP, b"ping"))]

    run(main())


def test_the_loop_does_not_drain_the_set_again_in_an_iteration_where_the_device_polled():
    """While the tunnel is busy the device drains the set before each batch; the loop's own
    reader of the set (`_datagrams_ready`, ready in the same iteration) must not drain it a
    second time, or a host-side flood would get two turns per batch of the tunnel where
    add_reader gave it one. Once the device has gone quiet, the loop's reader serves the set."""

    async def main():
        async with exit_and_udp_server() as (dev, shell, server, port):
            shell.receive_packets(
                [(PEER_KEY, build_udp_packet(PEER4, LO4, 40011, port, b"a"))], time.monotonic()
            )
            wait_readable(server)
            _data, source = server.recvfrom(100)
            (flow,) = shell._live
            server.sendto(b"one", source)
            wait_readable(flow.handle)
            assert shell.poll() is True  # the device, before its batch
            assert len(shell.take_packets()) == 1
            server.sendto(b"two", source)
            wait_readable(flow.handle)
            wakes = dev.wakes
            shell._datagrams_ready()  # the loop's reader, in the same iteration: its turn is had
            assert shell.take_packets() == [] and dev.wakes == wakes
            shell._datagrams_ready()  # a later iteration in which the device did not poll
            (reply,) = shell.take_packets()
            assert bytes(parse_udp(parse_ip(reply)).payload) == b"two"
            assert dev.wakes == wakes + 1

    run(main())


def test_a_socket_closed_without_remove_leaves_its_fd_number_free_for_the_next_one():
    """The kernel drops a closed socket from the epoll set, not from our callbacks: the stale
    entry must neither run for a socket that merely reuses the number on the loop nor keep
    the next datagram socket with that number from being watched with its own callback."""
    loop = asyncio.new_event_loop()
    got: list[str] = []
    try:
        watched = DatagramSockets(loop, lambda: None)
        old, _old_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fd = old.fileno()
        watched.add(fd, got.append, "old")
        old.close()  # a path that forgot `remove`
        _old_peer.close()
        new, new_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            assert new.fileno() == fd  # the lowest free number: the same one
            new_peer.send(b"x")
            assert watched.run_ready() == 0 and got == []  # not watched: nothing runs
            watched.add(fd, lambda: got.append(new.recv(10).decode()))
            assert watched.run_ready() == 1 and got == ["x"]
            watched.remove(fd)
        finally:
            new.close()
            new_peer.close()
        watched.close()
    finally:
        loop.close()
