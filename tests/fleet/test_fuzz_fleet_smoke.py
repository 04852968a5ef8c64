"""fuzz/fuzz_fleet.py on a few hundred inputs (without atheris), so the target cannot rot."""

from __future__ import annotations

import json
import random

from tether import keys

from ..api.test_fuzz_api_smoke import mutated


def record(op: int, kind: int, name: str, value: bytes) -> bytes:
    return bytes([op, kind]) + name.encode() + b"\x01" + value


def test_fleet_fuzz_target_smoke(fuzz_target):
    target = fuzz_target("fuzz_fleet")
    rnd = random.Random(15)
    k1, k2 = (keys.pubkey(keys.genkey()) for _ in range(2))

    def peer(k, *nets):
        doc = {"public_key": k, "allowed_ips": list(nets), "preshared_key": None, "comment": "c"}
        return json.dumps(doc).encode()

    good = b"\x00".join(
        [
            record(0, 0, k1, peer(k1, "10.6.0.3/32", "fd06::3/128")),
            record(0, 1, "10.6.0.3/32", json.dumps({"peer": k1}).encode()),
            record(0, 1, "fd06::3/128", json.dumps({"peer": k1}).encode()),
            record(2, 0, k2, peer(k2, "10.6.0.2/32")),  # the hand-written peer's address
            record(2, 5, "", b""),
            record(1, 0, k1, b""),
            record(2, 2, k2, b'{"secret_sha256": "x"}'),
        ]
    )
    seeds = [
        good,
        b"http://127.0.0.1:2379,https://[::1]:2380",
        b"/tetherctl/x/",
        record(0, 0, k1, peer(k1, "0.0.0.0/0")),
        b"",
        b"\n",  # a name with a line break: the error stays one line
    ]
    for seed in seeds:
        target.TestOneInput(seed)
    for data in mutated(rnd, seeds, 300, (0, 5), b'{}[]":,./0136abx\x00\x01\x02'):
        target.TestOneInput(data)
