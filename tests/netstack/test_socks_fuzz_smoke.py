"""Runs fuzz/fuzz_socks.py's TestOneInput on recorded proxy answers, mutations of them and
random bytes, without atheris, so the target cannot rot (the long runs are `make fuzz
TARGET=socks`)."""

import random

SEEDS = [
    b"\x05\x02\x01\x00\x05\x00\x00\x01\xc6\x12\x04\x01\xb7\xecHTTP/1.0 200 OK\r\n",
    b"\x05\x00\x05\x05\x00\x01\xc6\x12\x04\x01\xb7\xf0",
    b"\x05\x02\x01\x01",
    b"\x05\xff",
    b"\x05\x00\x05\x00\x00\x03\x05relay\x04\x38",
    b"\x05\x00\x05\x00\x00\x04" + bytes(16) + b"\x04\x38",
]
DATAGRAMS = [
    b"\x00\x00\x00\x01\xc6\x12\x04\x02\x1b_hello from 198.18.4.1",
    b"\x00\x00\x00\x03\x07example\x00\x35x",
    b"\x00\x00\x00\x04" + bytes(16) + b"\x00\x01payload",
]


def test_fuzz_socks_smoke(fuzz_target):
    target = fuzz_target("fuzz_socks")
    rnd = random.Random(1928)
    for i in range(1500):
        if i % 3 == 2:
            body = bytearray(rnd.choice(DATAGRAMS))
            head = bytes([1])
        else:
            body = bytearray(rnd.choice(SEEDS))
            head = bytes([rnd.randrange(128) * 2, rnd.randrange(256)])
        for _ in range(rnd.randrange(4)):
            if body and rnd.random() < 0.7:
                body[rnd.randrange(len(body))] = rnd.randrange(256)
            else:
                at = rnd.randrange(len(body) + 1)
                body[at:at] = rnd.randbytes(rnd.randrange(1, 6))
        if rnd.random() < 0.2:
            body = body[: rnd.randrange(len(body) + 1)]
        if i % 10 == 0:
            body = bytearray(rnd.randbytes(rnd.randrange(40)))
        target.TestOneInput(head + bytes(body))
