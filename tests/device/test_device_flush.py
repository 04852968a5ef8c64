"""How the device hands the core's datagrams to its UDP socket: GSO batches, fallback, drops
(`udp.DatagramSender`, which the device sends every batch of the core's datagrams through)."""

from __future__ import annotations

import errno
import socket

from tether.device.udp import GSO_BYTES, GSO_MAX, SOL_UDP, UDP_SEGMENT, DatagramSender


class FakeSocket:
    family = socket.AF_INET

    def __init__(self, refuse_gso: bool = False, full: bool = False):
        self.sent: list[tuple[list[bytes], int | None, tuple]] = []
        self.refuse_gso = refuse_gso
        self.full = full

    def sendto(self, data, address):
        if self.full:
            raise BlockingIOError
        self.sent.append(([bytes(data)], None, address))

    def sendmsg(self, buffers, ancdata, flags, address):
        if self.refuse_gso:
            raise OSError(errno.EIO, "Input/output error")
        if self.full:
            raise BlockingIOError
        ((level, kind, size),) = ancdata
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        self.sent.append(([bytes(b) for b in buffers], int.from_bytes(size, "little"), address))


def sender_with(sock) -> DatagramSender:
    return DatagramSender(sock, "tflush")


A, B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def test_runs_of_equal_datagrams_become_one_gso_send():
    sock = FakeSocket()
    sender = sender_with(sock)
    full = [(bytes([i]) * 1452, A) for i in range(GSO_MAX + 3)]
    assert sender.send(full[:5] + [(b"x" * 1000, A), (b"ack" * 30, A), (b"y" * 1452, B)]) == 0
    # five full ones plus the shorter 1000-byte tail in one send; the small ACK alone; B alone
    assert [(len(bufs), size) for bufs, size, _ in sock.sent] == [(6, 1452), (1, None), (1, None)]
    assert b"".join(sock.sent[0][0]) == b"".join(d for d, _ in full[:5]) + b"x" * 1000
    assert [addr for _, _, addr in sock.sent] == [A, A, B]
    sock.sent.clear()
    sender.send(full)
    per_send = min(GSO_MAX, GSO_BYTES // 1452)  # one GSO send stays a valid UDP datagram
    assert [len(bufs) for bufs, _, _ in sock.sent] == [per_send, GSO_MAX + 3 - per_send]


def test_without_kernel_gso_everything_is_still_sent_once():
    sock = FakeSocket(refuse_gso=True)
    sender = sender_with(sock)
    sender.send([(bytes([i]) * 1400, A) for i in range(10)])
    assert [bufs[0][0] for bufs, _, _ in sock.sent] == list(range(10))
    assert not sender.gso


def test_full_socket_buffer_counts_drops():
    sender = sender_with(FakeSocket(full=True))
    assert sender.send([(b"z" * 1400, A)] * 4 + [(b"q", B)]) == 5
