"""Runs the atheris target's TestOneInput on a few hundred inputs, without atheris."""

import random
from pathlib import Path

from tether.netstack.wire import build_echo, build_ipv4, build_ipv6, build_udp_packet

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_ip_packets.py"


def seeds() -> list[bytes]:
    a4, b4 = bytes([10, 0, 0, 1]), bytes([1, 1, 1, 1])
    a6, b6 = bytes(15) + b"\x01", b"\x20\x01" + bytes(14)
    return [
        build_udp_packet(a4, b4, 1, 53, b"q" * 40),
        build_udp_packet(a6, b6, 1, 53, b"q" * 700),
        build_echo(a4, b4, 1, 2, b"ping", reply=False),
        build_echo(a6, b6, 1, 2, b"ping", reply=False),
        build_ipv4(a4, b4, 99, b"x", options=b"\x94\x04\x00\x00"),
        build_ipv6(a6, b6, 0, bytes([60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0])),
        build_ipv6(a6, b6, 44, bytes([17, 0, 0, 1, 0, 0, 0, 7]) + bytes(16)),
    ]


def test_fuzz_target_smoke(fuzz_target):
    target = fuzz_target("fuzz_ip_packets")
    rnd = random.Random(1234)
    base = seeds()
    for i in range(600):
        kind = i % 3
        if kind == 0:
            data = bytes([0, rnd.randrange(256)]) + rnd.randbytes(rnd.randrange(80))
        elif kind == 1:
            pkt = bytearray(rnd.choice(base))
            for _ in range(rnd.randrange(4)):
                pkt[rnd.randrange(len(pkt))] = rnd.randrange(256)
            cut = rnd.randrange(len(pkt) + 1) if rnd.random() < 0.3 else len(pkt)
            data = bytes([0, rnd.randrange(256)]) + bytes(pkt[:cut])
        else:
            data = bytes([1, rnd.randrange(256)]) + rnd.randbytes(rnd.randrange(300))
        target.TestOneInput(data)
    for pkt in base:
        target.TestOneInput(b"\x00\x00" + pkt)
