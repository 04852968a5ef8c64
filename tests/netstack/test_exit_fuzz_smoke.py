"""Runs fuzz/fuzz_exit.py's TestOneInput on a few thousand inputs, without atheris."""

import random
import struct
from pathlib import Path

from tether.netstack.wire import SYN, build_echo, build_segment, build_udp_packet

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_exit.py"


def raw(packet: bytes, peer: int = 0) -> bytes:
    return bytes([peer << 7]) + struct.pack("!H", len(packet)) + packet


def seeds() -> list[bytes]:
    from tether.netstack.wire import build_ipv4

    p4, d4 = bytes([10, 9, 0, 2]), bytes([198, 51, 100, 7])
    syn = build_ipv4(p4, d4, 6, build_segment(p4, d4, 1000, 80, 5, 0, SYN, 65535, mss=1400))
    ack = build_ipv4(p4, d4, 6, build_segment(p4, d4, 1000, 80, 6, 8, 0x10, 65535, b"GET /"))
    return [
        raw(build_udp_packet(p4, d4, 5000, 53, b"q" * 30)) + bytes([2, 0, 4, 0, 0, 0, 0]),
        raw(syn) + bytes([2, 0, 0]) + raw(ack) + bytes([2 | 8, 0, 3, 1, 2, 3]) + bytes([3, 40]),
        raw(build_echo(p4, d4, 1, 2, b"ping", reply=False)) + bytes([2 | 0x1C, 0, 4, 0, 0, 0, 0]),
        bytes([1, 0x00, 0, 0, 0, 0, 0, 0, 4]) + bytes(32),
        bytes([1, 0x81, 0, 0, 0, 9, 0x20, 0, 8]) + bytes(64) + bytes([3, 200]),
    ]


def test_fuzz_exit_smoke(fuzz_target):
    target = fuzz_target("fuzz_exit")
    rnd = random.Random(4321)
    base = seeds()
    for s in base:
        target.TestOneInput(s)
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            data = rnd.randbytes(rnd.randrange(200))
        elif kind == 1:
            data = bytearray(b"".join(rnd.choice(base) for _ in range(rnd.randrange(1, 4))))
            for _ in range(rnd.randrange(6)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        else:
            data = bytes(rnd.choice([1, 2, 3, 5, 6, 7]) for _ in range(rnd.randrange(1, 30)))
            data += rnd.randbytes(rnd.randrange(300))
        target.TestOneInput(bytes(data))
    assert target._EXIT.counters()["tcp_flows_opened"] > 0
    assert target._EXIT.counters()["udp_flows_opened"] > 0
