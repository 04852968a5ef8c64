"""Runs the API fuzz target's TestOneInput on a few hundred inputs, without atheris."""

from __future__ import annotations

import importlib.util
import logging
import random
from pathlib import Path

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_api.py"


def load_target():
    spec = importlib.util.spec_from_file_location("fuzz_api", TARGET)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_target_smoke(caplog):
    caplog.set_level(logging.CRITICAL)
    target = load_target()
    rnd = random.Random(4321)
    seeds = [
        bytes([1, 0, 0, 3]) + b"x\x00\x00",
        bytes([1, 1, 0, 3]) + b"x\x00\x00format=qr",
        bytes([0, 0, 3, 2]) + b"\x00\x00format=svg",
        bytes([2, 0, 2, 2]) + b"\x00\x00",
        bytes([1, 3, 0, 0]) + b"ipv4\x00" + b"A" * 43 + b"=\x00",
        bytes([0, 4, 4, 40]) + b"\x00\x00",
        bytes([1, 0, 1, 16]) + b"\x00" + b"x" * 9000 + b"\x00",
    ]
    for seed in seeds:
        target.TestOneInput(seed)
    for _ in range(600):
        base = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(0, 6)):
            op = rnd.randint(0, 2)
            if op == 0 and base:
                base[rnd.randrange(len(base))] = rnd.randrange(256)
            elif op == 1:
                base.insert(rnd.randrange(len(base) + 1), rnd.choice(b"/.%=+?&\x00Aa9 \xff"))
            elif base:
                del base[rnd.randrange(len(base))]
        target.TestOneInput(bytes(base))
