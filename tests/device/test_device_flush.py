"""How the device hands the core's datagrams to its UDP socket: GSO batches, fallback, drops."""

from __future__ import annotations

import errno
import socket

from tether.device.device import GSO_BYTES, GSO_MAX, SOL_UDP, UDP_SEGMENT, Device


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


def device_with(sock) -> Device:
    dev = Device("tflush")
    dev.sock = sock
    return dev


A, B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def test_runs_of_equal_datagrams_become_one_gso_send():
    sock = FakeSocket()
    dev = device_with(sock)
    full = [(bytes([i]) * 1452, A) for i in range(GSO_MAX + 3)]
    dev.core.outgoing = full[:5] + [(b"x" * 1000, A), (b"ack" * 30, A), (b"y" * 1452, B)]
    dev._flush()
    # five full ones plus the shorter 1000-byte tail in one send; the small ACK alone; B alone
    assert [(len(bufs), size) for bufs, size, _ in sock.sent] == [(6, 1452), (1, None), (1, None)]
    assert b"".join(sock.sent[0][0]) == b"".join(d for d, _ in full[:5]) + b"x" * 1000
    assert [addr for _, _, addr in sock.sent] == [A, A, B]
    sock.sent.clear()
    dev.core.outgoing = full
    dev._flush()
    per_send = min(GSO_MAX, GSO_BYTES // 1452)  # one GSO send stays a valid UDP datagram
    assert [len(bufs) for bufs, _, _ in sock.sent] == [per_send, GSO_MAX + 3 - per_send]


def test_without_kernel_gso_everything_is_still_sent_once():
    sock = FakeSocket(refuse_gso=True)
    dev = device_with(sock)
    dev.core.outgoing = [(bytes([i]) * 1400, A) for i in range(10)]
    dev._flush()
    assert [bufs[0][0] for bufs, _, _ in sock.sent] == list(range(10))
    assert not dev._gso


def test_full_socket_buffer_counts_drops():
    dev = device_with(FakeSocket(full=True))
    dev.core.outgoing = [(b"z" * 1400, A)] * 4 + [(b"q", B)]
    dev._flush()
    assert dev.core.stats.drops["send_buffer_full"] == 5
