"""The device's data path on loopback, with a real WireGuard peer (our protocol core on a plain
UDP socket) and an inside that answers every packet: outputs are collected once, where input
arrives, and host-side input reaches the device through `wake()`, one collection per loop
iteration however often it is called."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time

from tether import keys
from tether.device.device import Device
from tether.wireguard.core import WireGuardCore

from .support import QuietInside, loopback, set_peer

CLIENT_IP, DEVICE_IP = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
WALL = 1_700_000_000.0


def ip4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0, src, dst)
    return header + payload


class Reflector(QuietInside):
    """An inside that sends every packet back to where it came from, at once, and counts how
    often the device collects from it."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.out: list[bytes] = []
        self.received: list[tuple[bytes, bytes]] = []
        self.delays: list[float | None] = []  # queue_delay of each batch
        self.collections = 0

    def receive_packets(self, packets, now, queue_delay=None):
        self.delays.append(queue_delay)
        for peer_key, packet in packets:
            self.received.append((peer_key, packet))
            self.out.append(packet[:12] + packet[16:20] + packet[12:16] + packet[20:])

    def take_packets(self):
        self.collections += 1
        out, self.out = self.out, []
        return out

    def counters(self):
        return {"answered": len(self.received)}


@contextlib.asynccontextmanager
async def reflecting_device(inside_factory=None):
    """A device with a Reflector inside (or `inside_factory`'s) on loopback, and a WireGuard
    client core with its own socket: yields (device, client core, client socket, the device's
    address)."""
    host = loopback()
    device = Device(
        "tcollect",
        private_key=keys.generate_private(),
        addresses=[ipaddress.ip_interface("10.0.0.1/24")],
        inside_factory=inside_factory or Reflector,
        bind_host4="127.0.0.1",
        bind_host6="::1",
    )
    device.start(asyncio.get_running_loop(), 0)
    client_sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                socket.SOCK_DGRAM)  # fmt: skip
    client_sock.bind((host, 0))
    client_sock.setblocking(False)
    client = WireGuardCore(keys.generate_private())
    device_addr = (host, device.listen_port)
    client.add_or_update_peer(
        device.public_key, now=0.0, endpoint=device_addr, allowed_ips=["10.0.0.0/24"]
    )
    set_peer(device, client.public_key, allowed_ips=[ipaddress.ip_network("10.0.0.2/32")])
    try:
        yield device, client, client_sock, device_addr
    finally:
        device.close()
        client_sock.close()


async def exchange(client, client_sock, device_addr, hold: float = 0.0) -> list:
    """Send what the client core has queued until an answer comes back; `hold`: block the
    event loop (the device's too) this long after each send, as a busy process would."""
    loop = asyncio.get_running_loop()
    answers = []
    deadline = time.monotonic() + 10
    while not answers:
        for datagram, _ in client.take_datagrams():
            client_sock.sendto(datagram, device_addr)
        if hold:
            time.sleep(hold)
        timeout = deadline - time.monotonic()
        assert timeout > 0, "no answer from the device"
        data, source = await asyncio.wait_for(loop.sock_recvfrom(client_sock, 65535), timeout)
        client.receive_datagram(data, source[:2], time.monotonic(), WALL)
        answers = client.take_packets()
    return answers


def test_a_packet_is_answered_within_the_readable_callback_that_brought_it():
    async def main():
        async with reflecting_device() as (device, client, client_sock, device_addr):
            inside = device.inside
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"ping"), time.monotonic(), WALL)
            answers = await exchange(client, client_sock, device_addr)
            # The Reflector never calls wake(): its answer left in the collection made by the
            # readable callback that brought the packet.
            ((key, packet),) = answers
            assert key == device.public_key
            assert packet == ip4(DEVICE_IP, CLIENT_IP, b"ping")
            assert inside.received == [(client.public_key, ip4(CLIENT_IP, DEVICE_IP, b"ping"))]
            assert device.snapshot().inside == {"answered": 1}

            # Host-side input: the inside wakes the device, as often as it likes; the device
            # collects once, on the next loop iteration.
            before = inside.collections
            for _ in range(5):
                inside.context.wake()
            assert inside.collections == before  # not within wake()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert inside.collections == before + 1

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_inside_learns_how_long_a_batch_waited_in_the_socket_queue():
    """The kernel's receive timestamp of a read's first datagram gives the queue's delay (what
    the exit sizes TCP windows by): a datagram that sat 80 ms while the process was busy
    arrives with a delay of about 80 ms, one read at once with a small one."""

    async def main():
        async with reflecting_device() as (device, client, client_sock, device_addr):
            inside = device.inside
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"one"), time.monotonic(), WALL)
            await exchange(client, client_sock, device_addr)  # the handshake, too
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"two"), time.monotonic(), WALL)
            await exchange(client, client_sock, device_addr, hold=0.08)
            assert inside.delays[-1] is not None and 0.07 <= inside.delays[-1] < 2.0
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"three"), time.monotonic(), WALL)
            await exchange(client, client_sock, device_addr)
            assert inside.delays[-1] is not None and inside.delays[-1] < 0.07
            waited, reads = device.snapshot().queue_delay  # what /metrics reports
            assert reads >= 3 and 0.07 <= waited < 3.0

    asyncio.run(asyncio.wait_for(main(), 30))
