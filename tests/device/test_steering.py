"""The reuseport steering program, run by the kernel: crafted WireGuard datagrams sent over
loopback to a steered group land on the socket of the worker that owns their receiver index, and
initiations from one endpoint always land on one socket (docs/workers.md)."""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import struct

import pytest

from tether.device import steering
from tether.wireguard.session import IndexTable

TAG = struct.Struct("<I")  # each crafted datagram carries its ordinal at byte 16 (or 24)


def message(kind: int, receiver: int, ordinal: int) -> bytes:
    """A datagram shaped like a WireGuard message of `kind` naming our index `receiver`
    (only the fields the program reads are real; the rest is random, as ciphertext is)."""
    if kind == 4:  # type, receiver, counter, payload (a keepalive's 16-byte tag at least)
        body = struct.pack("<II", 4, receiver) + os.urandom(8) + TAG.pack(ordinal)
        return body + os.urandom(28)
    if kind == 3:  # type, receiver, nonce, encrypted cookie: 64 bytes
        return struct.pack("<II", 3, receiver) + os.urandom(8) + TAG.pack(ordinal) + bytes(44)
    if kind == 2:  # type, sender, receiver, ...: 92 bytes
        head = struct.pack("<III", 2, random.getrandbits(32), receiver) + os.urandom(12)
        return head + TAG.pack(ordinal) + os.urandom(60)
    if kind == 1:  # type, sender, ...: 148 bytes
        return (
            struct.pack("<II", 1, random.getrandbits(32))
            + os.urandom(8)
            + TAG.pack(ordinal)
            + os.urandom(128)
        )
    raise ValueError(kind)


def tagged(datagram: bytes, ordinal: int) -> bytes:
    at = 24 if datagram[0] == 2 else 16
    return datagram[:at] + TAG.pack(ordinal) + datagram[at + 4 :]


def ordinal_of(datagram: bytes) -> int:
    at = 24 if datagram[0] == 2 else 16
    return TAG.unpack_from(datagram, at)[0]


def receive_all(socks: list[socket.socket], expected: int) -> dict[int, int]:
    """ordinal -> index of the socket that received it, for `expected` datagrams (bounded)."""
    got: dict[int, int] = {}
    while len(got) < expected:
        readable, _, _ = select.select(socks, [], [], 2.0)
        if not readable:
            break
        for sock in readable:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                got[ordinal_of(data)] = socks.index(sock)
    return got


@pytest.fixture(params=[("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)], ids=["v4", "v6"])
def sender_family(request):
    return request.param


def senders(host: str, family: int, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        out.append(s)
    return out


@contextlib.contextmanager
def steered(workers: int, host: str, family: int, sources: int = 1):
    """A steered group of `workers` sockets and `sources` sending sockets; (group, sources,
    the group's port), all closed afterwards."""
    group = steering.reuseport_group(0, workers)
    src = senders(host, family, sources)
    try:
        yield group, src, group[0].getsockname()[1]
    finally:
        for sock in group + src:
            sock.close()


@pytest.mark.parametrize("workers", [2, 3])
def test_messages_with_a_receiver_index_land_on_its_worker(workers, sender_family):
    host, family = sender_family
    with steered(workers, host, family, 1) as (group, src, port):
        receivers = [random.getrandbits(32) for _ in range(8 * workers)]
        receivers = [(r + i % workers - r % workers) & 0xFFFFFFFF for i, r in enumerate(receivers)]
        datagrams = [message(kind, r, 0) for kind in (4, 3, 2) for r in receivers]
        datagrams = [tagged(d, ordinal) for ordinal, d in enumerate(datagrams)]
        sent = {ordinal_of(d): steering.worker_for(d, workers) for d in datagrams}
        for datagram in datagrams:
            src[0].sendto(datagram, (host, port))
        got = receive_all(group, len(sent))
        assert got == sent  # every one arrived, each on the worker its receiver index names
        assert set(got.values()) == set(range(workers))


def test_initiations_from_one_endpoint_stay_on_one_worker_and_endpoints_spread(sender_family):
    host, family = sender_family
    with steered(2, host, family, 16) as (group, src, port):
        origin: dict[int, int] = {}
        ordinal = 0
        for k, s in enumerate(src):
            for _ in range(4):  # a fresh random sender index each time, as real retries have
                datagram = message(1, 0, ordinal)
                assert steering.worker_for(datagram, 2) is None
                s.sendto(datagram, (host, port))
                origin[ordinal] = k
                ordinal += 1
        got = receive_all(group, len(origin))
        assert set(got) == set(origin)
        per_endpoint: dict[int, set[int]] = {}
        for o, worker in got.items():
            per_endpoint.setdefault(origin[o], set()).add(worker)
        assert all(len(w) == 1 for w in per_endpoint.values())  # one endpoint, one worker
        # 16 endpoints all hashed to one of 2 sockets: probability 2**-15
        assert {next(iter(w)) for w in per_endpoint.values()} == {0, 1}


def test_too_short_or_unknown_datagrams_take_the_hash_and_are_delivered(sender_family):
    host, family = sender_family
    with steered(2, host, family, 1) as (group, src, port):
        crafted = [
            struct.pack("<B", 4) + bytes(3) + TAG.pack(0),  # 8 bytes: no room for an index
            struct.pack("<I", 5) + bytes(12) + TAG.pack(1),  # unknown type
            struct.pack("<I", 0x104) + bytes(12) + TAG.pack(2),  # reserved byte set
        ]
        for datagram in crafted:
            assert steering.worker_for(datagram, 2) is None
            src[0].sendto(datagram, (host, port))
        got: list[int] = []
        deadline = 3
        while len(got) < 3 and deadline:
            readable, _, _ = select.select(group, [], [], 1.0)
            deadline -= not readable
            for sock in readable:
                sock.recv(2048)
                got.append(group.index(sock))
        assert len(got) == 3 and len(set(got)) == 1  # one source: the hash picks one socket


def test_without_the_program_one_source_reaches_one_socket_only(sender_family):
    """The control: a group with no program hashes the 4-tuple, so the data messages of one
    endpoint meant for two workers all reach one socket; the test above can fail."""
    host, family = sender_family
    from tether.device import udp

    group = [udp.bind(0, reuseport=True)]
    group.append(udp.bind(group[0].getsockname()[1], reuseport=True))
    src = senders(host, family, 1)
    try:
        port = group[0].getsockname()[1]
        for ordinal in range(8):
            src[0].sendto(message(4, ordinal, ordinal), (host, port))  # residues 0, 1, 0, ...
        got = receive_all(group, 8)
        assert len(got) == 8 and len(set(got.values())) == 1
    finally:
        for sock in group + src:
            sock.close()


def test_program_bounds_and_model():
    with pytest.raises(ValueError):
        steering.program(0)
    with pytest.raises(ValueError):
        steering.program(steering.MAX_WORKERS + 1)
    assert steering.worker_for(message(4, 0xFFFFFFFF, 0), 3) == 0xFFFFFFFF % 3
    assert steering.worker_for(message(2, 7, 0), 4) == 3
    assert steering.worker_for(message(3, 5, 0), 2) == 1


@pytest.mark.parametrize("k,n", [(0, 1), (0, 2), (1, 2), (2, 3), (6, 7)])
def test_index_table_allocates_from_its_residue_class(k, n):
    rng = random.Random(k * 100 + n)
    table = IndexTable(lambda: rng.getrandbits(32), (k, n))
    for _ in range(500):
        index = table.allocate()
        assert 0 <= index <= 0xFFFFFFFF and index % n == k


def test_index_table_retries_past_the_top_of_the_space():
    # 0xFFFFFFFF is ≡ 0 mod 3 (3 divides 2**32 - 1): class 2 would give 2**32 + 1, so the
    # allocator must draw again instead of wrapping or overflowing
    draws = iter([0xFFFFFFFF, 10])
    assert IndexTable(lambda: next(draws), (2, 3)).allocate() == 11
    with pytest.raises(ValueError):
        IndexTable(lambda: 0, (2, 2))


def test_arbitrary_datagrams_are_all_delivered_where_the_model_says(sender_family):
    """Abuse: random bytes of every length around the checks (0..120), with the type word
    often valid, never lose a datagram or trip the program; each lands where `worker_for`
    predicts, or, for the hashed ones, on the one socket this source hashes to."""
    host, family = sender_family
    rng = random.Random(14)
    with steered(3, host, family, 1) as (group, src, port):
        hashed = set()
        for _ in range(300):
            datagram = bytearray(rng.randbytes(rng.randrange(0, 121)))
            if len(datagram) >= 4 and rng.random() < 0.7:
                datagram[:4] = struct.pack("<I", rng.randrange(0, 6))
            datagram = bytes(datagram)
            src[0].sendto(datagram, (host, port))
            readable, _, _ = select.select(group, [], [], 2.0)
            assert len(readable) == 1
            assert readable[0].recv(2048) == datagram
            expected = steering.worker_for(datagram, 3)
            if expected is None:
                hashed.add(group.index(readable[0]))
            else:
                assert group.index(readable[0]) == expected
        assert len(hashed) == 1


def test_a_member_stays_while_any_descriptor_holds_it_and_its_slot_is_refilled_when_it_goes():
    """The failure mode docs/workers.md builds on: a dead worker's socket stays in the group
    while the parent keeps a copy of its descriptor; once the last copy closes, the kernel
    moves the group's last socket into the hole, so index 1 means another socket."""
    host, family = "127.0.0.1", socket.AF_INET
    with steered(3, host, family, 1) as (group, src, port):
        kept = socket.socket(fileno=os.dup(group[1].fileno()))  # the parent's copy
        group[1].close()  # the worker's copy: the worker died
        datagrams = [message(4, 1 + 3 * k, k) for k in range(4)]  # all for worker 1
        for datagram in datagrams:
            src[0].sendto(datagram, (host, port))
        assert receive_all([group[0], kept, group[2]], 4) == dict.fromkeys(range(4), 1)
        kept.close()  # no copy left: the slot is refilled by the last socket, group[2]
        for datagram in datagrams:
            src[0].sendto(datagram, (host, port))
        assert receive_all([group[0], group[2]], 4) == dict.fromkeys(range(4), 1)


def test_worker_roles_are_checked_and_owners_by_key_are_stable_and_spread():
    def sock(_port):
        raise AssertionError("not bound in this test")

    with pytest.raises(ValueError):
        steering.WorkerRole(2, 2, sock)
    with pytest.raises(ValueError):
        steering.WorkerRole(0, steering.MAX_WORKERS + 1, sock)
    with pytest.raises(ValueError):
        steering.WorkerRole(0, 2, sock, owner=lambda key: 0)  # an owner rule needs a forward
    keys_ = [os.urandom(32) for _ in range(64)]
    owners = [steering.owner_by_key(k, 3) for k in keys_]
    assert owners == [steering.owner_by_key(k, 3) for k in keys_]
    assert set(owners) == {0, 1, 2}
