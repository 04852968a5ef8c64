"""Runs the TCP atheris target's TestOneInput on a few hundred inputs, without atheris."""

from __future__ import annotations

import random
from pathlib import Path

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_tcp.py"


def test_fuzz_target_survives_random_programs(fuzz_target) -> None:
    target = fuzz_target("fuzz_tcp")
    rng = random.Random(20241125)
    for i in range(400):
        n = rng.choice([0, 1, 10, 100, 400, 2000])
        data = rng.randbytes(n)
        if i % 3 == 0:
            # Bias toward long programs of valid segments: opcodes 0/1 with small fields.
            data = (
                bytes([0x00, 0, 0x0F])
                + data[:40]
                + bytes(
                    b for _ in range(200) for b in (rng.choice([0, 1, 12, 24]), rng.randrange(256))
                )
            )
        target.TestOneInput(data)


def test_fuzz_target_accepts_degenerate_inputs(fuzz_target) -> None:
    target = fuzz_target("fuzz_tcp")
    for data in (b"", b"\xff" * 64, bytes(64), bytes(range(256)) * 8):
        target.TestOneInput(data)
