"""bench/ping_split.py's reading of a capture: each request's datagram In paired with the next
datagram Out; a request whose reply was lost is skipped, not paired with the next reply."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ping_split  # noqa: E402

CAPTURE = """\
1796188934.000000000 t1a3 In  IP 198.19.0.2.40000 > 198.19.0.1.51820: UDP, length 272
1796188934.000900000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 272
1796188934.050000000 t1a3 In  IP 198.19.0.2.40000 > 198.19.0.1.51820: UDP, length 272
1796188934.100000000 t1a3 In  IP 198.19.0.2.40000 > 198.19.0.1.51820: UDP, length 272
1796188934.102500000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 272
1796188934.103000000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 272
garbage line
"""


def test_shares_pair_each_request_with_the_next_reply():
    got = ping_split.shares(CAPTURE)
    assert [round(x, 3) for x in got] == [0.9, 2.5]


def test_the_filter_matches_the_ping_size():
    # 200-byte payload + 8 ICMP + 20 IP = 228, padded to 240; + 16 + 16 WireGuard; + 8 UDP
    assert ping_split.PING_SIZE + 28 <= 240 < ping_split.PING_SIZE + 28 + 16
    assert ping_split._UDP_LENGTH == 280
