"""Two Devices as two workers of one device (docs/workers.md): one steered reuseport group,
the same configuration, session indices from residue classes 0 and 1. Real clients (the
sans-IO core over loopback sockets, each its own endpoint) handshake and exchange data; every
session lives on exactly one worker and every data message reaches the worker that holds it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from tether import keys
from tether.device import steering
from tether.device.device import Device
from tether.wireguard.core import WireGuardCore

from .support import loopback, set_peer
from .test_device_collect import WALL, Reflector, ip4

CLIENTS = 16  # all on one of two workers (or no initiation forwarded): probability 2**-15
DEVICE_IP = bytes([10, 0, 0, 1])


def run_workers(owned_by_key: bool) -> None:
    """Two workers, CLIENTS clients each on its own endpoint, three round trips each; checks
    that every session is on one worker (the owner by key when `owned_by_key`, else the one
    the 4-tuple hash chose) and all its data reached that worker."""

    async def main():
        loop = asyncio.get_running_loop()
        host = loopback()
        private = keys.generate_private()
        group = steering.reuseport_group(0, 2, "127.0.0.1", "::1")
        port = group[0].getsockname()[1]
        workers: list[Device] = []

        def forward(owner, key, datagram, source):  # the inter-worker channel: a loop hop
            loop.call_soon(workers[owner].receive_forwarded, datagram, source)

        def owner(key):
            return steering.owner_by_key(key, 2)

        for k in range(2):
            role = steering.WorkerRole(
                k, 2, lambda _port, k=k: group[k],
                owner if owned_by_key else None, forward if owned_by_key else None,
            )  # fmt: skip
            workers.append(
                Device(
                    f"twork{k}",
                    private_key=private,
                    addresses=[ipaddress.ip_interface("10.0.0.1/24")],
                    inside_factory=Reflector,
                    role=role,
                )
            )
        clients = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            for device in workers:
                device.start(loop, port)
                assert device.listen_port == port
            for n in range(CLIENTS):
                core = WireGuardCore(keys.generate_private())
                core.add_or_update_peer(
                    workers[0].public_key,
                    now=0.0,
                    endpoint=(host, port),
                    allowed_ips=["10.0.0.1/32"],
                )
                for device in workers:  # the full configuration on every worker
                    set_peer(
                        device,
                        core.public_key,
                        allowed_ips=[ipaddress.ip_network(f"10.0.1.{n}/32")],
                    )
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind((host, 0))
                sock.setblocking(False)
                clients.append((core, sock, bytes([10, 0, 1, n])))

            async def round_trip(core, sock, ip, payload):
                core.send_packet(ip4(ip, DEVICE_IP, payload), time.monotonic(), WALL)
                deadline = time.monotonic() + 10
                while True:
                    for datagram, _ in core.take_datagrams():
                        sock.sendto(datagram, (host, port))
                    answers = core.take_packets()
                    if answers:
                        return answers
                    timeout = deadline - time.monotonic()
                    assert timeout > 0, "no answer from the workers"
                    data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), timeout)
                    core.receive_datagram(data, source[:2], time.monotonic(), WALL)

            for payload in (b"first", b"again", b"third"):
                for core, sock, ip in clients:
                    ((key, packet),) = await round_trip(core, sock, ip, payload)
                    assert packet == ip4(DEVICE_IP, ip, payload)

            owners = []
            for core, _, _ in clients:
                holding = [
                    k
                    for k, device in enumerate(workers)
                    if device.snapshot().peers[core.public_key].last_handshake is not None
                ]
                assert len(holding) == 1  # one handshake, on one worker
                (holder,) = holding
                if owned_by_key:
                    assert holder == owner(core.public_key)
                received = [
                    p for key, p in workers[holder].inside.received if key == core.public_key
                ]
                assert len(received) == 3  # all its data reached the session's worker
                owners.append(holder)
            assert set(owners) == {0, 1}  # peers spread over the workers
            counters = [device.snapshot().counters for device in workers]
            assert sum(c["handshakes_completed"] for c in counters) == CLIENTS
            forwarded = sum(c["initiations_forwarded"] for c in counters)
            if owned_by_key:  # each initiation lands on the non-owner with probability 1/2
                assert forwarded > 0
            else:
                assert forwarded == 0
            for c in counters:
                assert c["drop_unknown_index"] == 0  # no data message on a stranger worker
        finally:
            for device in workers:
                device.close()
            for _, sock, _ in clients:
                sock.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_sessions_and_their_data_stay_on_the_worker_that_took_the_handshake():
    run_workers(owned_by_key=False)


def test_with_owners_by_key_initiations_reach_the_owner_wherever_they_land():
    run_workers(owned_by_key=True)
