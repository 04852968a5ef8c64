"""Runs fuzz/fuzz_config.py's TestOneInput on the corpus and a few hundred mutations of it,
without atheris, so the target cannot rot (the long runs are `make fuzz TARGET=config`)."""

import random
from pathlib import Path

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_config.py"
CORPUS = Path(__file__).parent / "corpus"


def test_fuzz_config_smoke(fuzz_target):
    target = fuzz_target("fuzz_config")
    files = [p.read_bytes() for p in sorted(CORPUS.glob("*.conf"))]
    assert any(b"[Exit]" in f for f in files)
    for data in files:
        target.TestOneInput(data)
    rnd = random.Random(99)
    pieces = [
        b"[Exit]\n",
        b"PeerToPeer = yes\n",
        b"AllowDestinations = 10.0.0.0/8\n",
        b"MaxFlowsPerPeer = 2000\n",
        b"MaxBuffer = 1M\n",
        b"Egress = socks5://u%40x:p%23w@proxy.example:1080\n",
        b"Egress = direct\n",
        b"# c\n",
        b"\n",
        b"[Peer]\n",
    ]
    for _ in range(400):
        data = bytearray(rnd.choice(files))
        for _ in range(rnd.randrange(4)):
            at = rnd.randrange(len(data) + 1)
            if rnd.random() < 0.5:
                data[at:at] = rnd.choice(pieces)
            elif data:
                data[min(at, len(data) - 1)] = rnd.randrange(32, 127)
        target.TestOneInput(bytes(data))
