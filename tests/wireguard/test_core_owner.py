"""Peer ownership between the workers of one device (docs/workers.md), in the sans-IO core: a
worker passes an initiation from a peer it does not own to the owner instead of answering it,
the owner answers it as if it had come from the peer, and only the owner starts handshakes."""

from __future__ import annotations

import random

from tether import keys
from tether.wireguard.core import WireGuardCore

from .support import A_ADDR, B_ADDR, WALL_OFFSET, ip4, mtype

CLIENT_IP, SERVER_IP = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])


def device_workers(client: WireGuardCore, owner: int):
    """Two workers of one device (same key, residue classes 0 and 1) that both know `client`,
    which worker `owner` owns."""
    private = keys.generate_private()
    workers = []
    for k in range(2):
        core = WireGuardCore(private, rng=random.Random(k), index_residue=(k, 2))
        core.set_owner(lambda key, k=k: key != client.public_key or k == owner)
        core.add_or_update_peer(client.public_key, now=0.0, allowed_ips=["10.0.0.2/32"])
        workers.append(core)
    client.add_or_update_peer(
        workers[0].public_key, now=0.0, endpoint=B_ADDR, allowed_ips=["0.0.0.0/0"]
    )
    return workers


def initiation(client: WireGuardCore) -> bytes:
    client.send_packet(ip4(CLIENT_IP, SERVER_IP, b"hello"), 1.0, WALL_OFFSET + 1)
    ((datagram, _),) = client.take_datagrams()
    assert mtype(datagram) == 1
    return datagram


def test_an_initiation_for_another_workers_peer_is_forwarded_and_answered_by_the_owner():
    client = WireGuardCore(keys.generate_private(), rng=random.Random(9))
    w0, w1 = device_workers(client, owner=1)
    datagram = initiation(client)

    w0.receive_datagram(datagram, A_ADDR, 1.0, WALL_OFFSET + 1)
    assert w0.take_datagrams() == []  # no answer from the worker that does not own the peer
    assert w0.take_forwards() == [(client.public_key, datagram, A_ADDR)]
    assert w0.counters()["initiations_forwarded"] == 1
    assert w0.peer_status(client.public_key).last_handshake is None

    w1.receive_forwarded(datagram, A_ADDR, 1.0)
    ((response, endpoint),) = w1.take_datagrams()
    assert mtype(response) == 2 and endpoint == A_ADDR
    sender = int.from_bytes(response[4:8], "little")
    assert sender % 2 == 1  # the owner's index class: the peer's data steers to it

    client.receive_datagram(response, B_ADDR, 1.0, WALL_OFFSET + 1)
    for data, _ in client.take_datagrams():  # the staged packet, on the new session
        w1.receive_datagram(data, A_ADDR, 1.0, WALL_OFFSET + 1)
    assert w1.take_packets() == [(client.public_key, ip4(CLIENT_IP, SERVER_IP, b"hello"))]
    assert w1.counters()["handshakes_completed"] == 1


def test_the_owner_answers_directly_and_forwards_nothing():
    client = WireGuardCore(keys.generate_private(), rng=random.Random(3))
    w0, _ = device_workers(client, owner=0)
    w0.receive_datagram(initiation(client), A_ADDR, 1.0, WALL_OFFSET + 1)
    assert w0.take_forwards() == []
    ((response, _),) = w0.take_datagrams()
    assert mtype(response) == 2


def test_a_forwarded_initiation_the_worker_does_not_own_is_dropped_not_sent_on():
    client = WireGuardCore(keys.generate_private(), rng=random.Random(4))
    w0, _ = device_workers(client, owner=1)
    w0.receive_forwarded(initiation(client), A_ADDR, 1.0)
    assert w0.take_forwards() == [] and w0.take_datagrams() == []
    assert w0.counters()["drop_forwarded_not_owned"] == 1
    w0.receive_forwarded(b"\x01\x00\x00\x00" + bytes(10), A_ADDR, 1.0)  # not an initiation
    w0.receive_forwarded(bytes(148), A_ADDR, 1.0)
    assert w0.counters()["drop_malformed"] == 2


def test_only_the_owner_starts_handshakes_toward_a_peer():
    server_key = keys.generate_private()
    peer = WireGuardCore(keys.generate_private())
    cores = []
    for k in range(2):
        core = WireGuardCore(server_key, rng=random.Random(k), index_residue=(k, 2))
        core.set_owner(lambda key, k=k: k == 1)
        core.add_or_update_peer(
            peer.public_key, now=0.0, endpoint=A_ADDR, allowed_ips=["10.0.0.2/32"],
            persistent_keepalive=25,
        )  # fmt: skip
        core.send_packet(ip4(SERVER_IP, CLIENT_IP, b"to the peer"), 1.0, WALL_OFFSET + 1)
        for t in (30.0, 60.0):  # keepalive and retry timers, if any were armed
            core.handle_timer(t, WALL_OFFSET + t)
        cores.append(core)
    assert cores[0].take_datagrams() == []
    assert cores[0].counters()["initiations_sent"] == 0
    assert {mtype(d) for d, _ in cores[1].take_datagrams()} == {1}
